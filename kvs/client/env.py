"""Where a client finds a node when it is not told: one place for the defaults that the
client library and every CLI subcommand share (and that the CLI can read without
importing the HTTP client, which a node never needs)."""

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "KVS_URL"
TOKEN_ENV = "KVS_TOKEN"
CACERT_ENV = "KVS_CACERT"  # a PEM bundle of the CA(s) that signed an https node's certificate
# What every 401 the CLI reports ends with.
TOKEN_HINT = f"pass a token with --token TOKEN or ${TOKEN_ENV}"
