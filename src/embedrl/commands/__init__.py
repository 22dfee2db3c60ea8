"""One module per `embedrl` subcommand; each defines `register(subparsers)`."""
