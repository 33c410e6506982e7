//! `chatterpro admin …`: an operator's tasks, run against the database a
//! server uses — while it runs, too. SQLite lets a second process write
//! (each write waits for the others); a running server learns of what was
//! done from the record storage keeps of it (see `hub::lifecycle`).

use anyhow::{Context, bail};

use crate::config::{AdminArgs, AdminTask};
use crate::domain::RoomName;
use crate::storage::{MessageStore, SqliteStore};

/// Runs one task; the error explains what went wrong, for the terminal.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.task {
        AdminTask::DeleteRoom { name } => {
            let room = RoomName::parse(&name).map_err(|e| anyhow::anyhow!("room name {e}"))?;
            if args.default_rooms.iter().any(|d| d.trim() == room.as_str()) {
                bail!(
                    "{:?} is a default room (--rooms), which always exists; remove it from \
                     --rooms first",
                    room.as_str()
                );
            }
            // Opening would create a missing database: a mistyped path must
            // not leave an empty one behind and report "no room".
            let path = args.database_url.trim_start_matches("sqlite://");
            let path = path.split('?').next().unwrap_or(path);
            if args.database_url.starts_with("sqlite://") && !std::path::Path::new(path).exists() {
                bail!("there is no database at {path:?} (--database-url)");
            }
            let store = SqliteStore::connect(&args.database_url)
                .await
                .with_context(|| format!("opening {}", args.database_url))?;
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
    }
}
