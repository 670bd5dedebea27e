"""What every `kvs` subcommand module shares without importing another: the usage error."""


class UsageError(Exception):
    """Bad input found after argparse (a JSON argument that is not JSON): exit status 2."""
