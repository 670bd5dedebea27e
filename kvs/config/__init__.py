"""Node configuration: every setting declared once (`declaration`), the rules its values follow
(`rules`), and the files that carry it (`files`: load, validate with one-line errors, write a
commented default, produce the documentation table)."""

from kvs.config.declaration import Config, Setting, declared, project
from kvs.config.files import (
    DEFAULT_CONFIG_NAME,
    default_config_text,
    from_mapping,
    generate_node_id,
    load,
    settings_table,
    write_default,
    write_text_private,
)
from kvs.config.rules import ConfigError, parse_size, render

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "Config",
    "ConfigError",
    "Setting",
    "declared",
    "default_config_text",
    "from_mapping",
    "generate_node_id",
    "load",
    "parse_size",
    "project",
    "render",
    "settings_table",
    "write_default",
    "write_text_private",
]
