//! The authorization matrix (`matrix.md`) checked against [`decide`]: one
//! test, every cell. The table is plain text so that a person reads it as
//! the rules and the server's integration test can replay the same rows
//! against real connections.

use super::{Actor, Decision, Operation, Role, Room, RoomKind, decide};

const MATRIX: &str = include_str!("matrix.md");

const KINDS: [RoomKind; 3] = [RoomKind::Public, RoomKind::Private, RoomKind::Dm];

const ACTORS: [&str; 9] = [
    "guest",
    "non-member",
    "member",
    "moderator",
    "owner",
    "admin",
    "admin in default room",
    "banned",
    "blocked DM partner",
];

/// One row of the table: an actor, an operation, an answer per kind
/// (`None` for `—`).
struct Row<'a> {
    actor: &'a str,
    operation: &'a str,
    cells: [Option<Decision>; 3],
}

fn rows() -> Vec<Row<'static>> {
    MATRIX
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("|-"))
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [actor, operation, public, private, dm] = cols[..] else {
                panic!("a row has five columns: {line}");
            };
            let cell = |s: &str| match s {
                "allow" => Some(Decision::Allow),
                "not_found" => Some(Decision::NotFound),
                "forbidden" => Some(Decision::Forbidden),
                "—" => None,
                other => panic!("unknown answer {other:?} in {line}"),
            };
            Row {
                actor,
                operation,
                cells: [cell(public), cell(private), cell(dm)],
            }
        })
        .collect()
}

fn role(s: &str) -> Role {
    Role::parse(s).unwrap_or_else(|| panic!("unknown role {s:?}"))
}

fn operation(s: &str) -> Operation {
    let words: Vec<&str> = s.split(' ').collect();
    match words[..] {
        ["see_in_rooms"] => Operation::SeeInRooms,
        ["join"] => Operation::Join,
        ["history"] => Operation::History,
        ["since"] => Operation::Since,
        ["send"] => Operation::Send,
        ["invite"] => Operation::Invite,
        ["create_invite"] => Operation::CreateInvite,
        ["kick", target] => Operation::Kick {
            target: role(target),
        },
        ["ban", target] => Operation::Ban {
            target: role(target),
        },
        ["unban"] => Operation::Unban,
        ["set_role", target, to] => Operation::SetRole {
            target: role(target),
            to: role(to),
        },
        ["delete_own_message"] => Operation::DeleteOwnMessage,
        ["delete_others_message", author] => Operation::DeleteOthersMessage {
            author: role(author),
        },
        ["open_dm"] => Operation::OpenDm,
        ["delete_room"] => Operation::DeleteRoom,
        ["create_private_room"] => Operation::CreatePrivateRoom,
        _ => panic!("unknown operation {s:?}"),
    }
}

/// The actor and the room as the actor's row means them, in a room of
/// `kind`; `None` where the actor has no such place (a DM's moderator).
fn fixture(actor: &str, kind: RoomKind) -> Option<(Actor, Room)> {
    let account = Actor::Account { admin: false };
    let admin = Actor::Account { admin: true };
    let room = |role: Option<Role>| Room {
        kind,
        has_owner: kind != RoomKind::Dm,
        role,
        banned: false,
        blocked: false,
    };
    let dm = kind == RoomKind::Dm;
    Some(match actor {
        "guest" => (Actor::Guest, room(None)),
        "non-member" => (account, room(None)),
        "member" => (account, room(Some(Role::Member))),
        "moderator" if !dm => (account, room(Some(Role::Moderator))),
        "owner" if !dm => (account, room(Some(Role::Owner))),
        "admin" => (admin, room(None)),
        "admin in default room" if kind == RoomKind::Public => (
            admin,
            Room {
                has_owner: false,
                ..room(None)
            },
        ),
        "banned" if !dm => (
            account,
            Room {
                banned: true,
                ..room(None)
            },
        ),
        "blocked DM partner" if dm => (
            account,
            Room {
                blocked: true,
                ..room(Some(Role::Member))
            },
        ),
        _ if ACTORS.contains(&actor) => return None,
        _ => panic!("unknown actor {actor:?}"),
    })
}

/// Whether `op` is asked of a room of `kind` at all.
fn applies(op: Operation, kind: RoomKind) -> bool {
    match op {
        Operation::OpenDm => kind == RoomKind::Dm,
        Operation::CreatePrivateRoom => kind == RoomKind::Private,
        _ => true,
    }
}

fn ask(actor: Actor, op: Operation, room: &Room) -> Decision {
    match op {
        // Asked of the DM the actor would open with this room's other account.
        Operation::OpenDm => decide(actor, op, Some(&Room::dm_to_open(room.blocked))),
        Operation::CreatePrivateRoom => decide(actor, op, None),
        _ => decide(actor, op, Some(room)),
    }
}

#[test]
fn every_cell_of_the_matrix_is_what_the_policy_decides() {
    let rows = rows();
    let mut wrong = Vec::new();
    for row in &rows {
        let op = operation(row.operation);
        for (kind, expected) in KINDS.into_iter().zip(row.cells) {
            let fixture = fixture(row.actor, kind).filter(|_| applies(op, kind));
            match (fixture, expected) {
                (Some((actor, room)), Some(expected)) => {
                    let got = ask(actor, op, &room);
                    if got != expected {
                        wrong.push(format!(
                            "{} | {} | {}: expected {expected:?}, decided {got:?}",
                            row.actor,
                            row.operation,
                            kind.as_str()
                        ));
                    }
                }
                (None, None) => {}
                (Some(_), None) => wrong.push(format!(
                    "{} | {} | {}: the cell is empty",
                    row.actor,
                    row.operation,
                    kind.as_str()
                )),
                (None, Some(_)) => wrong.push(format!(
                    "{} | {} | {}: the cell has no meaning, it must be —",
                    row.actor,
                    row.operation,
                    kind.as_str()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Every actor has a row for every operation any actor has, once: a new
/// operation or actor cannot be added for some and forgotten for others.
#[test]
fn the_matrix_has_every_actor_for_every_operation_once() {
    let rows = rows();
    let mut operations: Vec<&str> = rows.iter().map(|r| r.operation).collect();
    operations.sort_unstable();
    operations.dedup();
    for actor in ACTORS {
        for op in &operations {
            let n = rows
                .iter()
                .filter(|r| r.actor == actor && r.operation == *op)
                .count();
            assert_eq!(n, 1, "{actor} | {op}: {n} rows");
        }
    }
    assert_eq!(rows.len(), ACTORS.len() * operations.len());
}

/// What the table cannot show: a room that does not exist is `not_found`
/// for every operation on a room, whoever asks.
#[test]
fn a_room_that_does_not_exist_is_not_found_for_everyone() {
    for actor in [
        Actor::Guest,
        Actor::Account { admin: false },
        Actor::Account { admin: true },
    ] {
        for op in [
            Operation::SeeInRooms,
            Operation::Join,
            Operation::Send,
            Operation::Invite,
            Operation::Kick {
                target: Role::Member,
            },
            Operation::DeleteRoom,
        ] {
            assert_eq!(
                decide(actor, op, None),
                Decision::NotFound,
                "{actor:?} {op:?}"
            );
        }
    }
    // Opening a DM that does not exist yet (no block) is what creates it.
    assert_eq!(
        decide(Actor::Account { admin: false }, Operation::OpenDm, None),
        Decision::Allow
    );
}
