"""TLS settings and seeds (issue 14): seed forms, the Go KVS's `cluster_tls_*` keys,
`tls_ca_file`, how `kvs start`/`status` reach a TLS node, and the client's CA bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from kvs.cli import local
from kvs.client.operations import resolve_verify
from kvs.config import ConfigError, load
from kvs.config.files import from_mapping
from kvs.net.seeds import split_seed


@pytest.mark.parametrize(
    ("seed", "parts"),
    [
        ("10.0.0.1:8080", ("", "10.0.0.1", 8080)),
        ("https://10.0.0.1:8080", ("https", "10.0.0.1", 8080)),
        ("http://kvs1.example.com:80/", ("http", "kvs1.example.com", 80)),
        ("https://[::1]:8443", ("https", "::1", 8443)),
        ("[fe80::1]:8080", ("", "fe80::1", 8080)),
    ],
)
def test_seeds_may_have_a_scheme(seed: str, parts: tuple[str, str, int]) -> None:
    assert split_seed(seed) == parts
    assert from_mapping({"node_id": "n", "seed_nodes": [seed]}).seed_nodes == [seed]


@pytest.mark.parametrize(
    "seed",
    ["https://10.0.0.1", "ftp://h:1", "h:0", "h:70000", "https://h:1/path", "h", "", "a b:1", 7],
)
def test_a_bad_seed_is_one_line_naming_the_key(seed: object) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping({"node_id": "n", "seed_nodes": [seed]})
    message = str(caught.value)
    assert message.startswith("seed_nodes: ") and "\n" not in message


def _pem_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "node.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "node.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))


def test_the_go_kvs_tls_keys_map_onto_ours(tmp_path: Path) -> None:
    _pem_files(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(
        "node_id: n\ncluster_tls_enabled: true\ncluster_tls_cert_file: node.pem\n"
        "cluster_tls_key_file: node.key\ncluster_tls_skip_verify: true\n"
    )
    config = load(path)
    assert (config.tls_cert_file, config.tls_key_file) == ("node.pem", "node.key")
    assert config.tls_skip_verify is True
    # disabled: the files are ignored, as the Go KVS ignores them
    path.write_text("node_id: n\ncluster_tls_enabled: false\ncluster_tls_cert_file: gone.pem\n")
    assert load(path).tls_cert_file == ""


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("cluster_tls_enabled: true\n", "cluster_tls_enabled"),
        ("cluster_tls_enabled: yes please\n", "cluster_tls_enabled"),
        (
            "cluster_tls_enabled: true\ncluster_tls_cert_file: 5\ncluster_tls_key_file: k\n",
            "cluster_tls_cert_file",
        ),
        ("tls_ca_file: missing.pem\n", "tls_ca_file"),
        ("root_token_lifetime: 0s\n", "root_token_lifetime"),
        ("root_token_lifetime: 400d\n", "root_token_lifetime"),
    ],
)
def test_bad_tls_settings_are_one_line(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("node_id: n\n" + text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.key == key and "\n" not in str(caught.value)


def test_start_and_status_reach_a_tls_node_in_its_scheme_trusting_its_certificate(
    tmp_path: Path,
) -> None:
    _pem_files(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text("node_id: n\nport: 8443\nbind_address: 0.0.0.0\n")
    assert local.base_url(load(path)) == "http://127.0.0.1:8443"
    assert local.trust(load(path)) is True
    path.write_text(
        "node_id: n\nport: 8443\ntls_cert_file: node.pem\ntls_key_file: node.key\n"
        "tls_ca_file: ca.pem\n"
    )
    config = load(path)
    assert local.base_url(config) == "https://127.0.0.1:8443"
    context = local.trust(config)
    assert not isinstance(context, bool)
    assert context.check_hostname is False  # dialled our own address, not a name
    assert len(context.get_ca_certs()) >= 2  # the node's own chain and tls_ca_file


def test_the_client_ca_bundle_comes_from_the_argument_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pem_files(tmp_path)
    monkeypatch.delenv("KVS_CACERT", raising=False)
    assert resolve_verify(None) is True
    assert not isinstance(resolve_verify(str(tmp_path / "ca.pem")), bool)
    monkeypatch.setenv("KVS_CACERT", str(tmp_path / "ca.pem"))
    assert not isinstance(resolve_verify(None), bool)
    with pytest.raises(ValueError, match="cannot read the CA bundle"):
        resolve_verify(str(tmp_path / "missing.pem"))
