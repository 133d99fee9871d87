//! `pg-cluster`: starts a private PostgreSQL cluster (see the library) and prints one line,
//! `<postmaster pid> <directory> <url>`. With `--exit` it then exits at once (the exit hook
//! stops the cluster); otherwise it holds the cluster until stdin closes. The testkit's tests
//! use it to prove no cluster outlives its process, killed or not; it is handy by hand too.

use std::io::{Read, Write};

fn main() {
    let cluster = tidemark_testkit::PgCluster::shared();
    let url = cluster.create_database();
    println!("{} {} {}", cluster.pid(), cluster.dir().display(), url);
    std::io::stdout().flush().expect("stdout");
    if std::env::args().any(|a| a == "--exit") {
        std::process::exit(0);
    }
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}
