//! A private `redis-server` for the cluster and broker tests: on a free
//! port, in its own temporary directory, killed (by PID) on drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// A private Redis; `aof`: `--appendonly yes --appendfsync always`.
    pub fn start(aof: bool) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            aof,
        };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server must be installed"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn cmd(&self, args: &[&str]) -> Option<redis::Value> {
        let mut c = redis::Client::open(self.url())
            .ok()?
            .get_connection()
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c).ok()
    }

    /// Closes the links named `name` and makes Redis refuse every new
    /// connection (`maxclients`) until [`Redis::accept_clients`], so the
    /// cut lasts as long as the test wants. Uses `con`, opened before.
    pub fn cut_and_hold(&self, con: &mut redis::Connection, name: &str) -> usize {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(con).unwrap();
        let lines: Vec<&str> = list.lines().collect();
        let _: redis::Value = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxclients")
            .arg(lines.len() - 1)
            .query(con)
            .unwrap();
        let ids: Vec<&str> = lines
            .iter()
            .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .collect();
        for id in &ids {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(*id)
                .query(con)
                .unwrap();
        }
        ids.len()
    }

    /// Ends [`Redis::cut_and_hold`]'s refusal.
    pub fn accept_clients(&self, con: &mut redis::Connection) {
        let _: redis::Value = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxclients")
            .arg(10_000)
            .query(con)
            .unwrap();
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same port; `wipe`: without its data.
    pub fn restart(&mut self, wipe: bool) {
        self.kill();
        if wipe {
            for e in std::fs::read_dir(self.dir.path()).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).unwrap();
                } else {
                    std::fs::remove_file(&p).unwrap();
                }
            }
        }
        self.spawn();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
