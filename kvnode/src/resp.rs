//! The Redis-protocol endpoint (`--resp-addr`): RESP2, so that redis-cli,
//! redis-benchmark and Redis client libraries work against the store.
//!
//! Each connection is a client of the cluster, with a session of its own
//! ([`kvclient::Client`], over connections shared by the endpoint): its
//! commands run one after another, in the order sent (pipelining is
//! allowed), each linearizable like the same call on the gRPC API. The
//! node is just the connection's first stop: on a follower, the command is
//! forwarded to the leader the client finds, and on Nil-ext a SET, MSET or
//! DEL takes the fast path, sent to every replica, as kvclient sends it.
//! Nothing here reads the local state machine.
//!
//! Commands and their mapping:
//!
//! | Redis                     | store                                    |
//! |---------------------------|------------------------------------------|
//! | `GET k`                   | get                                      |
//! | `MGET k...`               | multi-get (one point in time)            |
//! | `EXISTS k...`             | multi-get, present keys counted          |
//! | `SET k v`                 | put (Nil-ext: the fast path)             |
//! | `SET k v NX`, `SETNX k v` | compare-and-swap from absent             |
//! | `MSET k v ...`            | multi-put (atomic)                       |
//! | `DEL k...`                | one delete per key (see below)           |
//! | `INCR`, `INCRBY`, `DECR`, `DECRBY` | increment                       |
//! | `PING`, `ECHO`, `QUIT`, `SELECT 0` | answered here                   |
//! | `INFO`                    | this node's role, term, leader, indexes  |
//! | `COMMAND`, `CONFIG GET`   | empty arrays (clients probe them)        |
//!
//! Where the semantics differ from Redis:
//!
//! - `DEL` answers the number of keys it was given, not the number that
//!   existed: a delete here returns nothing (which is what lets Nil-ext
//!   make it durable in one round trip); counting would make it a
//!   read-modify-write. Several keys are deleted one after another, each
//!   linearizable, not atomically together.
//! - No expiry (`SET ... EX`), no other data types: refused with an error.
//! - An outcome the cluster could not confirm in time is the error
//!   `TIMEOUT ...` (the write may or may not have taken effect), as on the
//!   gRPC API; `EXPIRED ...` likewise when the session expired.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use consensus::NodeId;
use consensus::config::Protocol;
use kvclient::{Client, ClientError, ClientOptions, SharedConnections};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::members::AddressBook;
use crate::runtime::Event;

/// Connections served at once; one more is told so and closed (as Redis
/// does at `maxclients`).
pub const CONNECTIONS_MAX: usize = 1024;
/// The longest line: an inline command, or a multi-bulk header.
const LINE_BYTES_MAX: usize = 64 * 1024;
/// The most arguments in one command: an MSET of the most keys a
/// multi-put takes.
const ARGS_MAX: usize = 2 * consensus::limits::MULTI_KEYS_MAX + 1;
/// The most bytes of arguments in one command: a request's limit.
const COMMAND_BYTES_MAX: usize = consensus::limits::REQUEST_BYTES_MAX;

/// The endpoint of one node.
#[derive(Debug)]
pub struct RespEndpoint {
    /// This node.
    pub node_id: NodeId,
    /// The protocol, for INFO.
    pub protocol: Protocol,
    /// Where this node's client API listens (tried first).
    pub client_addr: String,
    /// Where the other members' client APIs listen.
    pub book: Arc<AddressBook>,
    /// The runtime's queue, for INFO.
    pub events: mpsc::Sender<Event>,
    /// How long one command may take, retries included.
    pub request_timeout: Duration,
    /// Client connections to the members, shared by every RESP connection.
    pub connections: SharedConnections,
}

/// Serves RESP connections from `listener` until the process ends.
pub async fn serve(listener: TcpListener, endpoint: Arc<RespEndpoint>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(%error, "RESP endpoint: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%from, "RESP endpoint: {CONNECTIONS_MAX} connections open; one refused");
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            if let Err(error) = endpoint.connection(stream).await {
                tracing::debug!(%from, %error, "RESP connection ended");
            }
            drop(slot);
        });
    }
}

/// Why a command could not be read.
#[derive(Debug)]
enum ReadError {
    /// The connection failed or closed in the middle of a command.
    Io(std::io::Error),
    /// Not RESP: answered with this error, and the connection closed.
    Protocol(String),
}

impl From<std::io::Error> for ReadError {
    fn from(error: std::io::Error) -> Self {
        ReadError::Io(error)
    }
}

/// Reads one line without its CRLF (or LF) into `line`; false at the end
/// of the stream before any byte.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> Result<bool, ReadError> {
    line.clear();
    let limit = LINE_BYTES_MAX as u64 + 2;
    let read = (&mut *reader).take(limit).read_until(b'\n', line).await?;
    if read == 0 {
        return Ok(false);
    }
    if line.last() != Some(&b'\n') {
        if read as u64 >= limit {
            return Err(ReadError::Protocol("too big inline request".into()));
        }
        return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(true)
}

/// The integer after a line's type byte.
fn header_number(line: &[u8], what: &str) -> Result<i64, ReadError> {
    std::str::from_utf8(&line[1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ReadError::Protocol(format!("invalid {what}")))
}

/// Reads one command: a multi-bulk array (what clients send), or an inline
/// command (words separated by spaces, as typed into telnet). `None` at the
/// end of the stream; an empty command for an empty line.
async fn read_command<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<Vec<u8>>>, ReadError> {
    let mut line = Vec::new();
    if !read_line(reader, &mut line).await? {
        return Ok(None);
    }
    if line.first() != Some(&b'*') {
        return Ok(Some(
            line.split(|b| b.is_ascii_whitespace())
                .filter(|word| !word.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
        ));
    }
    let count = header_number(&line, "multibulk length")?;
    if count <= 0 {
        return Ok(Some(Vec::new()));
    }
    if count as usize > ARGS_MAX {
        return Err(ReadError::Protocol(format!(
            "invalid multibulk length (at most {ARGS_MAX} arguments)"
        )));
    }
    let mut args = Vec::with_capacity(count as usize);
    let mut total = 0usize;
    for _ in 0..count {
        if !read_line(reader, &mut line).await? {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if line.first() != Some(&b'$') {
            let found = line.first().map_or(' ', |&b| b as char);
            return Err(ReadError::Protocol(format!("expected '$', got '{found}'")));
        }
        let len = header_number(&line, "bulk length")?;
        if len < 0 || len as usize > COMMAND_BYTES_MAX - total {
            return Err(ReadError::Protocol(format!(
                "invalid bulk length (a command's arguments take at most {COMMAND_BYTES_MAX} bytes)"
            )));
        }
        let len = len as usize;
        total += len;
        let mut arg = vec![0; len + 2];
        reader.read_exact(&mut arg).await?;
        if !arg.ends_with(b"\r\n") {
            return Err(ReadError::Protocol("bulk string not ended by CRLF".into()));
        }
        arg.truncate(len);
        args.push(arg);
    }
    Ok(Some(args))
}

/// An answer in RESP2.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(text) => {
                out.push(b'+');
                out.extend_from_slice(text.as_bytes());
            }
            Reply::Error(text) => {
                out.push(b'-');
                // One line: a line break would end the reply early.
                out.extend(
                    text.bytes()
                        .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
                );
            }
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}").as_bytes()),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1"),
            Reply::Bulk(Some(bytes)) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
            }
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(out);
                }
                return;
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn integer_arg(arg: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Reply::error("ERR value is not an integer or out of range"))
}

/// A client error as Redis clients expect errors: a code word first (an
/// execution error arrives as its text: `ExecutionError`'s, compared whole).
fn client_error(error: ClientError) -> Reply {
    use consensus::ExecutionError;
    match error {
        ClientError::Execution(message) if message == ExecutionError::NotAnInteger.to_string() => {
            Reply::error("ERR value is not an integer or out of range")
        }
        ClientError::Execution(message) if message == ExecutionError::Overflow.to_string() => {
            Reply::error("ERR increment or decrement would overflow")
        }
        ClientError::Execution(message) => Reply::error(format!("ERR {message}")),
        ClientError::Invalid(message) => Reply::error(format!("ERR invalid request: {message}")),
        error @ ClientError::Timeout { .. } => Reply::error(format!("TIMEOUT {error}")),
        error @ ClientError::SessionExpired(_) => Reply::error(format!("EXPIRED {error}")),
        error => Reply::error(format!("ERR {error}")),
    }
}

impl RespEndpoint {
    /// Serves one connection until it closes, sends QUIT, or breaks the
    /// protocol.
    async fn connection(&self, stream: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = tokio::io::BufReader::new(read);
        let mut client = None;
        let mut out = Vec::new();
        loop {
            let args = match read_command(&mut reader).await {
                Ok(Some(args)) => args,
                Ok(None) => return Ok(()),
                Err(ReadError::Io(error)) => return Err(error),
                Err(ReadError::Protocol(problem)) => {
                    Reply::error(format!("ERR Protocol error: {problem}")).encode(&mut out);
                    write.write_all(&out).await?;
                    return Ok(());
                }
            };
            let Some(name) = args.first() else {
                continue;
            };
            let name = String::from_utf8_lossy(name).to_ascii_uppercase();
            let reply = self.execute(&mut client, &name, &args[1..]).await;
            reply.encode(&mut out);
            // Answers to pipelined commands go out together.
            if name == "QUIT" || reader.buffer().is_empty() || out.len() > 64 * 1024 {
                write.write_all(&out).await?;
                out.clear();
            }
            if name == "QUIT" {
                return Ok(());
            }
        }
    }

    /// The connection's client, made on its first command that needs one.
    fn client<'a>(&self, client: &'a mut Option<Client>) -> Result<&'a mut Client, Reply> {
        if client.is_none() {
            let options = ClientOptions {
                timeout: self.request_timeout,
                attempt_timeout: self
                    .request_timeout
                    .min(ClientOptions::default().attempt_timeout),
                shared_connections: Some(self.connections.clone()),
                ..ClientOptions::default()
            };
            let made = Client::new(self.endpoints(), options).map_err(client_error)?;
            *client = Some(made);
        }
        Ok(client.as_mut().expect("made above"))
    }

    /// This node's client address, then every other member's.
    fn endpoints(&self) -> Vec<String> {
        let membership = self.book.membership();
        let mut seen = BTreeSet::new();
        std::iter::once(dialable(&self.client_addr))
            .chain(
                self.book
                    .all()
                    .into_iter()
                    .filter(|(id, _)| *id != self.node_id && membership.contains(*id))
                    .map(|(_, member)| dialable(&member.client_addr)),
            )
            .filter(|addr| seen.insert(addr.clone()))
            .collect()
    }

    async fn execute(&self, client: &mut Option<Client>, name: &str, args: &[Vec<u8>]) -> Reply {
        match self.run(client, name, args).await {
            Ok(reply) | Err(reply) => reply,
        }
    }

    async fn run(
        &self,
        slot: &mut Option<Client>,
        name: &str,
        args: &[Vec<u8>],
    ) -> Result<Reply, Reply> {
        let arity = |ok: bool| if ok { Ok(()) } else { Err(wrong_arity(name)) };
        Ok(match name {
            "PING" => match args {
                [] => Reply::Simple("PONG"),
                [message] => Reply::Bulk(Some(message.clone())),
                _ => return Err(wrong_arity(name)),
            },
            "ECHO" => {
                arity(args.len() == 1)?;
                Reply::Bulk(Some(args[0].clone()))
            }
            "QUIT" => Reply::Simple("OK"),
            "SELECT" => {
                arity(args.len() == 1)?;
                if args[0] != b"0" {
                    return Err(Reply::error(
                        "ERR DB index is out of range (this store has one database, 0)",
                    ));
                }
                Reply::Simple("OK")
            }
            // Clients probe these; an empty answer says "nothing to tell".
            "COMMAND" => Reply::Array(Vec::new()),
            "CONFIG" => match args.first().map(|a| a.to_ascii_uppercase()) {
                Some(sub) if sub == b"GET" => Reply::Array(Vec::new()),
                _ => {
                    return Err(Reply::error(
                        "ERR only CONFIG GET is answered (with nothing)",
                    ));
                }
            },
            "INFO" => {
                arity(args.len() <= 1)?;
                self.info().await?
            }
            "GET" => {
                arity(args.len() == 1)?;
                let client = self.client(slot)?;
                Reply::Bulk(client.get(args[0].clone()).await.map_err(client_error)?)
            }
            "MGET" | "EXISTS" => {
                arity(!args.is_empty())?;
                let client = self.client(slot)?;
                let values = client
                    .multi_get(args.to_vec())
                    .await
                    .map_err(client_error)?;
                if name == "EXISTS" {
                    Reply::Integer(values.iter().filter(|v| v.is_some()).count() as i64)
                } else {
                    Reply::Array(values.into_iter().map(Reply::Bulk).collect())
                }
            }
            "SET" => {
                arity(args.len() >= 2)?;
                let mut only_if_absent = false;
                for option in &args[2..] {
                    match option.to_ascii_uppercase().as_slice() {
                        b"NX" => only_if_absent = true,
                        other => {
                            return Err(Reply::error(format!(
                                "ERR SET option '{}' is not supported (no expiry, no XX or GET: \
                                 only NX)",
                                String::from_utf8_lossy(other)
                            )));
                        }
                    }
                }
                let (key, value) = (args[0].clone(), args[1].clone());
                let client = self.client(slot)?;
                if only_if_absent {
                    let (set, _) = client
                        .compare_and_swap(key, None, value)
                        .await
                        .map_err(client_error)?;
                    if set {
                        Reply::Simple("OK")
                    } else {
                        Reply::Bulk(None)
                    }
                } else {
                    client.put(key, value).await.map_err(client_error)?;
                    Reply::Simple("OK")
                }
            }
            "SETNX" => {
                arity(args.len() == 2)?;
                let client = self.client(slot)?;
                let (set, _) = client
                    .compare_and_swap(args[0].clone(), None, args[1].clone())
                    .await
                    .map_err(client_error)?;
                Reply::Integer(i64::from(set))
            }
            "MSET" => {
                arity(args.len() >= 2 && args.len().is_multiple_of(2))?;
                let pairs = args
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect();
                let client = self.client(slot)?;
                client.multi_put(pairs).await.map_err(client_error)?;
                Reply::Simple("OK")
            }
            "DEL" => {
                arity(!args.is_empty())?;
                let client = self.client(slot)?;
                for key in args {
                    client.delete(key.clone()).await.map_err(client_error)?;
                }
                Reply::Integer(args.len() as i64)
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by = match name {
                    "INCR" | "DECR" => {
                        arity(args.len() == 1)?;
                        1
                    }
                    _ => {
                        arity(args.len() == 2)?;
                        integer_arg(&args[1])?
                    }
                };
                let by = if name.starts_with("DECR") {
                    by.checked_neg()
                        .ok_or_else(|| Reply::error("ERR decrement would overflow"))?
                } else {
                    by
                };
                let client = self.client(slot)?;
                Reply::Integer(
                    client
                        .increment(args[0].clone(), by)
                        .await
                        .map_err(client_error)?,
                )
            }
            _ => {
                return Err(Reply::error(format!(
                    "ERR unknown command '{}', with args beginning with: {}",
                    name.to_ascii_lowercase(),
                    args.iter()
                        .take(3)
                        .map(|a| format!("'{}' ", String::from_utf8_lossy(a)))
                        .collect::<String>()
                )));
            }
        })
    }

    /// INFO: this node's view, in Redis's `field:value` lines.
    async fn info(&self) -> Result<Reply, Reply> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || Reply::error("ERR the node is not running");
        self.events
            .send(Event::Status { reply })
            .await
            .map_err(|_| unavailable())?;
        let node = tokio::time::timeout(Duration::from_secs(2), answer)
            .await
            .map_err(|_| Reply::error("TIMEOUT the node did not report its status in 2 s"))?
            .map_err(|_| unavailable())?;
        let s = node.status;
        let ids = |set: consensus::NodeSet| {
            set.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let leader_addr = s
            .leader
            .and_then(|leader| self.book.get(leader))
            .map(|member| member.client_addr)
            .unwrap_or_default();
        let text = format!(
            "# Server\r\nserver:kvnode\r\nprotocol:{}\r\nnode_id:{}\r\n\r\n\
             # Replication\r\nrole:{}\r\nterm:{}\r\nleader:{}\r\nleader_client_addr:{}\r\n\
             commit_index:{}\r\napplied_index:{}\r\nlast_log_index:{}\r\nvoters:{}\r\n\
             learners:{}\r\n",
            self.protocol,
            self.node_id,
            s.role.as_str(),
            s.term,
            s.leader.unwrap_or(0),
            leader_addr,
            s.commit_index,
            s.applied_index,
            s.last_log_index,
            ids(s.membership.voters),
            ids(s.membership.learners),
        );
        Ok(Reply::Bulk(Some(text.into_bytes())))
    }
}

/// A listen address as an address to connect to (`0.0.0.0` and `[::]`
/// listen everywhere, loopback included).
fn dialable(addr: &str) -> String {
    if let Some(port) = addr.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = addr.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        addr.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ReadError> {
        let mut reader = tokio::io::BufReader::new(bytes);
        read_command(&mut reader).await
    }

    #[tokio::test]
    async fn reads_multibulk_and_inline_commands() {
        let args = parse(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\nb\0\r\n")
            .await
            .expect("valid")
            .expect("a command");
        assert_eq!(
            args,
            vec![b"SET".to_vec(), b"k".to_vec(), b"a\r\nb\0".to_vec()]
        );
        let args = parse(b"get  key\n")
            .await
            .expect("valid")
            .expect("a command");
        assert_eq!(args, vec![b"get".to_vec(), b"key".to_vec()]);
        assert!(parse(b"").await.expect("valid").is_none());
    }

    #[tokio::test]
    async fn refuses_what_is_not_resp_or_too_big() {
        for bad in [
            &b"*2\r\n$3\r\nGET\r\n:1\r\n"[..],
            b"*x\r\n",
            b"*2\r\n$3\r\nGETX\r\n",
            b"*1\r\n$-5\r\n",
            b"*99999999\r\n",
            b"*1\r\n$99999999\r\n",
        ] {
            match parse(bad).await {
                Err(ReadError::Protocol(_)) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        let long = vec![b'a'; LINE_BYTES_MAX + 10];
        assert!(matches!(parse(&long).await, Err(ReadError::Protocol(_))));
        // Cut short: the connection ended, no answer owed.
        assert!(matches!(
            parse(b"*2\r\n$3\r\nGET\r\n").await,
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn encodes_replies() {
        let mut out = Vec::new();
        Reply::Array(vec![
            Reply::Bulk(Some(b"v".to_vec())),
            Reply::Bulk(None),
            Reply::Integer(-3),
            Reply::Simple("OK"),
            Reply::error("ERR two\r\nlines"),
        ])
        .encode(&mut out);
        assert_eq!(
            out,
            b"*5\r\n$1\r\nv\r\n$-1\r\n:-3\r\n+OK\r\n-ERR two  lines\r\n".to_vec()
        );
    }
}
