"""One module per ``pixelbus`` subcommand (see ``pixelbus.cli.app``)."""
