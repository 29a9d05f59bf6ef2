fn main() -> std::process::ExitCode {
    qexp::cli::main()
}
