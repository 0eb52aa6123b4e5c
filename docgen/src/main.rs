//! `taxi-docgen`: rewrites the generated pages of `docs/reference/` (see the library's docs).

use std::process::ExitCode;

fn main() -> ExitCode {
    let root = taxi_docgen::workspace_root();
    match taxi_docgen::write_all(&root) {
        Ok(written) if written.is_empty() => {
            println!("docs/reference/ is current");
            ExitCode::SUCCESS
        }
        Ok(written) => {
            for path in written {
                println!("wrote {path}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("taxi-docgen: {e}");
            ExitCode::FAILURE
        }
    }
}
