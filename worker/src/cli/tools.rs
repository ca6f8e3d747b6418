//! `exai-worker tools doc`: docs/tools.md, generated from this build's tool registry
//! (`exai_shared::tools::doc`); no configuration, no daemon.

use clap::Subcommand;
use exai_shared::tools;

/// The subcommands of `exai-worker tools`.
#[derive(Subcommand, Debug)]
pub enum ToolsCommand {
    /// Print docs/tools.md: every tool, its arguments and an example call
    /// (`exai-worker tools doc > docs/tools.md`).
    Doc,
}

/// Runs one `tools` subcommand.
pub fn run(command: &ToolsCommand) -> anyhow::Result<()> {
    match command {
        ToolsCommand::Doc => {
            let page = tools::doc::markdown(tools::all());
            // `say!` ends the process quietly when stdout is closed.
            for line in page.lines() {
                say!("{line}");
            }
            Ok(())
        }
    }
}
