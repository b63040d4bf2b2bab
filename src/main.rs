fn main() -> std::process::ExitCode {
    semtap::cli::main()
}
