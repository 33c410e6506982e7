//! `chatterpro admin …`: an operator's tasks, run against the database a
//! server uses — while it runs, too. SQLite lets a second process write
//! (each write waits for the others); a running server learns of what was
//! done from storage: a removed room from the record storage keeps of it
//! (see `hub::lifecycle`), an account's change at its sessions' next use
//! (a revoked session is gone from storage; a disabled account's sessions
//! with it).

use std::io::BufRead;

use anyhow::{Context, bail};

use crate::clock;
use crate::config::{AdminArgs, AdminTask};
use crate::domain::{Nickname, RoomName};
use crate::identity::password::{self, Passwords};
use crate::storage::{
    AccountStore, CreateAccountError, MessageStore, NewAccount, SqliteStore, StoredAccount,
};

/// Runs one task; the error explains what went wrong, for the terminal.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match &args.task {
        AdminTask::DeleteRoom { name } => delete_room(&args, name).await,
        AdminTask::CreateAccount { name, admin } => {
            let name = parse_name(name)?;
            let password = read_password()?;
            password::check_strength(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
            let store = open(&args).await?;
            let password_hash = Passwords::new(1).hash(&password).await?;
            let created = store
                .create_account(NewAccount {
                    name: name.as_str().to_owned(),
                    name_key: name.key(),
                    name_shape: name.shape(),
                    password_hash,
                    admin: *admin,
                    created_at: clock::now_ms(),
                })
                .await;
            match created {
                Ok(account) => {
                    let role = if account.admin { "admin " } else { "" };
                    println!("created the {role}account {:?}", account.name);
                    Ok(())
                }
                Err(CreateAccountError::NameTaken(holder)) => {
                    bail!("the name looks like the account {holder:?}'s")
                }
                Err(CreateAccountError::Storage(e)) => Err(busy(e.into())),
            }
        }
        AdminTask::SetAdmin { name } => {
            let store = open(&args).await?;
            let account = find(&store, name).await?;
            store
                .set_admin(account.id, true)
                .await
                .map_err(|e| busy(e.into()))?;
            println!("{:?} is a server admin", account.name);
            Ok(())
        }
        AdminTask::ResetPassword { name } => {
            let store = open(&args).await?;
            let account = find(&store, name).await?;
            let password = read_password()?;
            password::check_strength(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
            let hash = Passwords::new(1).hash(&password).await?;
            store
                .set_password_hash(account.id, &hash)
                .await
                .map_err(|e| busy(e.into()))?;
            let revoked = store
                .revoke_sessions(account.id, None)
                .await
                .map_err(|e| busy(e.into()))?;
            println!(
                "set the password of {:?} and signed it out of {} session(s)",
                account.name,
                revoked.len()
            );
            Ok(())
        }
        AdminTask::Disable { name } => {
            let store = open(&args).await?;
            let account = find(&store, name).await?;
            let revoked = store
                .disable_account(account.id)
                .await
                .map_err(|e| busy(e.into()))?
                .unwrap_or_default();
            println!(
                "disabled {:?} and signed it out of {} session(s)",
                account.name,
                revoked.len()
            );
            Ok(())
        }
    }
}

/// Opens the server's database, which must exist: opening would create a
/// missing one, and a mistyped path must not leave an empty database behind.
async fn open(args: &AdminArgs) -> anyhow::Result<SqliteStore> {
    let path = args.database_url.trim_start_matches("sqlite://");
    let path = path.split('?').next().unwrap_or(path);
    if args.database_url.starts_with("sqlite://") && !std::path::Path::new(path).exists() {
        bail!("there is no database at {path:?} (--database-url)");
    }
    SqliteStore::connect(&args.database_url)
        .await
        .with_context(|| format!("opening {}", args.database_url))
}

/// A transient storage error explained as one (every task may be repeated).
fn busy(e: anyhow::Error) -> anyhow::Error {
    let transient = e
        .downcast_ref::<crate::storage::StorageError>()
        .is_some_and(|e| e.is_transient());
    if transient {
        e.context("the database is busy or unreachable: run the command again")
    } else {
        e
    }
}

fn parse_name(name: &str) -> anyhow::Result<Nickname> {
    Nickname::parse(name).map_err(|e| anyhow::anyhow!("the name {e}"))
}

/// The account of `name` (or of a look-alike of it).
async fn find(store: &SqliteStore, name: &str) -> anyhow::Result<StoredAccount> {
    let name = parse_name(name)?;
    match store
        .find_account(&name.key(), &name.shape())
        .await
        .map_err(|e| busy(e.into()))?
    {
        Some(account) => Ok(account),
        None => bail!("there is no account {:?}", name.as_str()),
    }
}

/// One line of standard input, without its line ending: a password is
/// never a command-line argument, which other users can read in `ps`.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        bail!("no password on standard input (one line)");
    }
    Ok(password.to_owned())
}

async fn delete_room(args: &AdminArgs, name: &str) -> anyhow::Result<()> {
    let room = RoomName::parse(name).map_err(|e| anyhow::anyhow!("room name {e}"))?;
    if args.default_rooms.iter().any(|d| d.trim() == room.as_str()) {
        bail!(
            "{:?} is a default room (--rooms), which always exists; remove it from \
             --rooms first",
            room.as_str()
        );
    }
    let store = open(args).await?;
    let existed = match store.delete_room(&room, true).await {
        Ok(existed) => existed,
        Err(e) if e.is_transient() => {
            return Err(anyhow::Error::new(e).context(
                "the database is busy or unreachable: run the command again \
                 (removing a room can be repeated)",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if !existed {
        bail!("there is no room {:?}", room.as_str());
    }
    println!(
        "removed the room {:?} and its messages; a running server takes its members \
         out within a second",
        room.as_str()
    );
    Ok(())
}
