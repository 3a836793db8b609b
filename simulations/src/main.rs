fn main() {
    eprintln!("beamclaw-sim: the simulator arrives with the mesh core issue");
    std::process::exit(2);
}
