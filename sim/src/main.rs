//! `flashsale-sim`: seeded simulations of the flashsale service layer. See `cli.rs` for the
//! commands. Only a simulation build (`RUSTFLAGS="--cfg madsim"`) runs anything.

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    flashsale_sim::cli::main()
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "flashsale-sim runs only in a simulation build:\n  RUSTFLAGS=\"--cfg madsim\" \
         CARGO_TARGET_DIR=target/sim cargo run --release -p flashsale-sim -- run --seed 1"
    );
    std::process::ExitCode::from(2)
}
