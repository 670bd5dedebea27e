"""The web console's files (static/: HTML, CSS, JavaScript modules; no build step),
served by kvs/api/console.py."""
