fn main() { println!("tidemark-server: coming with issue 3"); }
