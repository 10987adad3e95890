//! Sync by file between real ledgers: the frames of a session sealed for one receiver,
//! imported, answered and the answer imported, with every refusal leaving the ledger as it was.

use fq_core::clock::{Clock, ManualClock};
use fq_core::sync::file::{self, FileError, Receiver};
use fq_core::sync::session::Credentials;
use fq_core::trust::GrantRole;

use crate::ledger::{T0, new_case};
use crate::sync::{Node, ca, node, sync};

fn creds(grant: &fq_core::trust::SignedGrant, key: &ed25519_dalek::SigningKey) -> Credentials {
    Credentials { ca: ca().verifying_key(), own: Some((grant.clone(), key.clone())), peer_scope_limit: None }
}

fn receiver(n: &Node) -> Receiver {
    let g = &n.grant.grant;
    Receiver {
        key: g.public_key,
        subject: g.subject.clone(),
        role: g.role,
        scope: g.scope.clone(),
        replica: Some(n.ledger.identity().replica),
    }
}

fn entropy(seed: u8) -> [u8; 72] {
    let mut e = [seed; 72];
    e[0] = e[0].wrapping_add(1);
    e
}

fn counts(n: &Node) -> [i64; 4] {
    n.ledger.counts().unwrap()
}

#[test]
fn file_round_trip_carries_cases_up_and_acks_down() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let mut other = node(&clock, 4, "dev-b", GrantRole::GridWorker, "532924101201");
    // Both devices met the township once; then dev-a works with no network.
    sync(&mut dev, &mut town, clock.now());
    other.ledger.create_case(new_case("另一台设备记录的纠纷")).unwrap();
    sync(&mut other, &mut town, clock.now());
    for i in 0..20 {
        dev.ledger.create_case(new_case(&format!("离线记录{i}"))).unwrap();
    }
    let to = file::upstream_receiver(&dev.ledger).unwrap().expect("the township's grant is known");
    assert_eq!(to.key, town.grant.grant.public_key);
    assert_eq!(dev.ledger.waiting_for(dev.ledger.upstream().unwrap()).unwrap(), (0, 20));
    let (out, wrote) =
        file::write(&mut dev.ledger, &creds(&dev.grant, &dev.key), &to, clock.now(), entropy(1)).unwrap();
    assert_eq!(wrote.stats.sent, 0, "nothing is acknowledged by writing a file");
    // The personal data is sealed: no party's ID number in the clear.
    assert!(!out.windows(18).any(|w| w == b"532924198001011230"));

    let (answer, imported) =
        file::import(&mut town.ledger, &creds(&town.grant, &town.key), &out, clock.now(), entropy(2)).unwrap();
    let answer = answer.expect("a file from a child is answered");
    assert_eq!(imported.stats.received, 20);
    assert_eq!(town.ledger.list(&Default::default()).unwrap().len(), 21);

    let (none, back) =
        file::import(&mut dev.ledger, &creds(&dev.grant, &dev.key), &answer, clock.now(), entropy(3)).unwrap();
    assert!(none.is_none(), "an answer is not answered");
    assert!(back.acknowledged);
    let up = dev.ledger.upstream().unwrap();
    assert_eq!(dev.ledger.waiting_for(up).unwrap(), (0, 0), "nothing is pending after the answer");
    assert_eq!(dev.ledger.list(&Default::default()).unwrap().len(), 21, "the other device's case came down");

    // The same answer again is a no-op.
    let before = counts(&dev);
    let (_, again) =
        file::import(&mut dev.ledger, &creds(&dev.grant, &dev.key), &answer, clock.now(), entropy(4)).unwrap();
    assert!(again.replayed);
    assert_eq!(counts(&dev), before);
}

#[test]
fn file_refuses_damage_truncation_and_the_wrong_receiver_with_nothing_applied() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut other_town = node(&clock, 5, "pinchuan", GrantRole::TownshipServer, "532924102");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    dev.ledger.create_case(new_case("离线记录")).unwrap();
    let (out, _) =
        file::write(&mut dev.ledger, &creds(&dev.grant, &dev.key), &receiver(&town), clock.now(), entropy(1)).unwrap();
    let before = counts(&town);
    for at in [10, out.len() / 2, out.len() - 70, out.len() - 1] {
        let mut flipped = out.clone();
        flipped[at] ^= 0x01;
        let err = file::import(&mut town.ledger, &creds(&town.grant, &town.key), &flipped, clock.now(), entropy(2))
            .unwrap_err();
        assert!(matches!(err, FileError::Damaged(_) | FileError::Sender(_) | FileError::NotAFile), "{err:?}");
    }
    for cut in [3, 100, out.len() - 1] {
        let err = file::import(&mut town.ledger, &creds(&town.grant, &town.key), &out[..cut], clock.now(), entropy(2))
            .unwrap_err();
        assert!(matches!(err, FileError::Damaged(_) | FileError::NotAFile), "{err:?}");
    }
    assert_eq!(counts(&town), before, "nothing applied");
    let err =
        file::import(&mut other_town.ledger, &creds(&other_town.grant, &other_town.key), &out, clock.now(), entropy(2))
            .unwrap_err();
    assert!(matches!(err, FileError::WrongReceiver { .. }), "{err:?}");
    assert_eq!(counts(&other_town)[0], 0);
    // The good file goes in, once; a replay is a no-op.
    file::import(&mut town.ledger, &creds(&town.grant, &town.key), &out, clock.now(), entropy(2)).unwrap();
    let after = counts(&town);
    let (_, replay) =
        file::import(&mut town.ledger, &creds(&town.grant, &town.key), &out, clock.now(), entropy(3)).unwrap();
    assert!(replay.replayed);
    assert_eq!(counts(&town)[..2], after[..2]);
}

#[test]
fn file_goes_device_to_device_and_on_to_the_township_with_its_signatures() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut a = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let mut b = node(&clock, 4, "dev-b", GrantRole::GridWorker, "532924101201");
    a.ledger.add_grant(&b.grant).unwrap();
    b.ledger.add_grant(&a.grant).unwrap();
    let case = a.ledger.create_case(new_case("网格员与调解员交换")).unwrap().id;
    a.ledger.add_note(case, "第一次调解").unwrap();
    let to_b = file::peer_receiver(&a.ledger, "dev-b").unwrap().unwrap();
    let (out, _) = file::write(&mut a.ledger, &creds(&a.grant, &a.key), &to_b, clock.now(), entropy(1)).unwrap();
    let (answer, got) = file::import(&mut b.ledger, &creds(&b.grant, &b.key), &out, clock.now(), entropy(2)).unwrap();
    assert_eq!(got.stats.received, 2);
    file::import(&mut a.ledger, &creds(&a.grant, &a.key), &answer.unwrap(), clock.now(), entropy(3)).unwrap();
    // b carries a's changes to the township with a's run signature.
    sync(&mut b, &mut town, clock.now());
    assert_eq!(town.ledger.heads(case).unwrap(), a.ledger.heads(case).unwrap());
    assert!(town.ledger.audit(10).unwrap().iter().all(|e| e.kind != "refused"));
}

#[test]
fn file_carrying_a_change_outside_its_authors_scope_applies_none_of_it() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut rogue = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let honest = {
        let mut n = node(&clock, 9, "dev-x", GrantRole::Mediator, "532924101202");
        let mut elsewhere = new_case("越界案件");
        elsewhere.village = Some("532924101202".parse().unwrap());
        n.ledger.create_case(elsewhere).unwrap();
        n
    };
    let mut honest = honest;
    let bytes = honest.ledger.changes_since(0, 10).unwrap();
    rogue.ledger.apply_changes(None, bytes.into_iter().map(Into::into).collect()).unwrap();
    let (out, _) =
        file::write(&mut rogue.ledger, &creds(&rogue.grant, &rogue.key), &receiver(&town), clock.now(), entropy(1))
            .unwrap();
    let (answer, report) =
        file::import(&mut town.ledger, &creds(&town.grant, &town.key), &out, clock.now(), entropy(2)).unwrap();
    assert_eq!(report.stats.received, 0);
    assert_eq!(report.stats.refused_here, 1);
    assert_eq!(town.ledger.list(&Default::default()).unwrap().len(), 0, "nothing applied");
    assert!(town.ledger.audit(10).unwrap().iter().any(|a| a.kind == "refused"));
    let (_, back) =
        file::import(&mut rogue.ledger, &creds(&rogue.grant, &rogue.key), &answer.unwrap(), clock.now(), entropy(3))
            .unwrap();
    assert_eq!(back.refused.len(), 1, "the answer tells the device");
    let _ = clock.now();
}

#[test]
fn file_answer_to_the_file_of_a_replaced_phone_is_refused_whole() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut old = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    sync(&mut old, &mut town, clock.now());
    for i in 0..3 {
        old.ledger.create_case(new_case(&format!("旧手机记录{i}"))).unwrap();
    }
    let to = file::upstream_receiver(&old.ledger).unwrap().expect("the township's grant is known");
    let (out, _) = file::write(&mut old.ledger, &creds(&old.grant, &old.key), &to, clock.now(), entropy(1)).unwrap();
    let (answer, _) =
        file::import(&mut town.ledger, &creds(&town.grant, &town.key), &out, clock.now(), entropy(2)).unwrap();
    let answer = answer.expect("answered");
    // The phone is replaced: the same certificate and key, a new ledger with a case of its own.
    let mut new = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    new.ledger.create_case(new_case("新手机记录")).unwrap();
    let before = counts(&new);
    let err = file::import(&mut new.ledger, &creds(&new.grant, &new.key), &answer, clock.now(), entropy(3))
        .expect_err("an answer about another log");
    assert!(matches!(err, FileError::NotOurAnswer), "{err:?}");
    assert_eq!(counts(&new), before, "nothing of the refused answer was applied");
    assert_eq!(new.ledger.upstream().unwrap(), None, "no acknowledgement was taken");
    // The phone that wrote the file takes it.
    let (_, back) =
        file::import(&mut old.ledger, &creds(&old.grant, &old.key), &answer, clock.now(), entropy(4)).unwrap();
    assert!(back.acknowledged);
}

#[test]
fn file_answer_read_hours_later_does_not_set_the_devices_clock() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    sync(&mut dev, &mut town, clock.now());
    dev.ledger.create_case(new_case("离线记录")).unwrap();
    let to = file::upstream_receiver(&dev.ledger).unwrap().expect("the township's grant is known");
    let (out, _) = file::write(&mut dev.ledger, &creds(&dev.grant, &dev.key), &to, clock.now(), entropy(1)).unwrap();
    let (answer, _) =
        file::import(&mut town.ledger, &creds(&town.grant, &town.key), &out, clock.now(), entropy(2)).unwrap();
    // The mediator walks back to the village: the answer is read five hours after it was written.
    clock.set(fq_core::clock::Timestamp(clock.now().0 + 5 * 3_600_000));
    file::import(&mut dev.ledger, &creds(&dev.grant, &dev.key), &answer.unwrap(), clock.now(), entropy(3)).unwrap();
    assert_eq!(
        dev.ledger.time_source(),
        fq_core::ledger::TimeSource::Local,
        "the file's old clock reading is not the time"
    );
}
