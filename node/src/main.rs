fn main() {
    println!("beamclaw {}", env!("CARGO_PKG_VERSION"));
}
