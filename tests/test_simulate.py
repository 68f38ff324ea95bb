"""`wxhook simulate`: a self-signed https endpoint (--insecure); a refused signature says
which token simulate signed with."""

import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.tools.simulate import simulate
from tests.support import TOKEN, sandbox_process, server_process


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Success(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-length", "7")
        self.end_headers()
        self.wfile.write(b"success")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def https_endpoint(tmp: Path) -> Iterator[str]:
    """An https server with a self-signed certificate that answers every push 'success'."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Success)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*self_signed(tmp))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/wechat"
    finally:
        server.shutdown()
        server.server_close()


async def test_insecure_reaches_a_self_signed_endpoint(make_settings, tmp_path, capsys):
    settings = make_settings()
    with https_endpoint(tmp_path) as url:
        kw = {"kind": "text", "url": url, "openid": "oSimulate0000000000000000001",
              "text": "hi", "event_key": "", "aes": False}
        refused = await simulate(settings, **kw)
        err = capsys.readouterr().err
        accepted = await simulate(settings, **kw, insecure=True)
    assert refused == 1 and "CERTIFICATE_VERIFY_FAILED" in err and "add --insecure" in err
    assert accepted == 0 and "(no reply: 'success')" in capsys.readouterr().out


@pytest.mark.slow
async def test_a_refused_signature_says_which_token_signed(make_settings, capsys):
    with sandbox_process() as api, server_process(api) as url:
        wrong = make_settings(WECHAT_TOKEN="anotherToken1")
        code = await simulate(wrong, kind="text", url=url + "/wechat", text="hi",
                              openid="oSimulate0000000000000000001", event_key="", aes=False)
    err = capsys.readouterr().err
    assert code == 1
    assert ("the server refused the signature: simulate signs with WECHAT_TOKEN from the "
            "environment or .env (13 characters)") in err
    assert "anotherToken1" not in err and TOKEN not in err


class _RefusedInPunycode(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = "xml: refused-by-the-server 你好".encode()
        self.send_response(400)
        self.send_header("content-type", "text/plain; charset=punycode")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def test_a_refusal_is_printed_as_utf8_whatever_charset_it_names(make_settings, capsys):
    # The answer's charset is the server's word: punycode would print other text (and
    # take seconds on a large body), so simulate reads it as the UTF-8 wxhook sends.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusedInPunycode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = await simulate(make_settings(), kind="text",
                              url=f"http://127.0.0.1:{server.server_address[1]}/wechat",
                              openid="oSimulate0000000000000000001", text="hi",
                              event_key="", aes=False)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert "xml: refused-by-the-server 你好" in capsys.readouterr().out
