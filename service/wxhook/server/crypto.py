"""WXBizMsgCrypt: the AES-256-CBC envelope of safe and compatible mode, with key rotation."""

from __future__ import annotations

import base64
import binascii
import secrets
import struct
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wxhook.errors import DecryptError
from wxhook.server.signature import sign, verify

_BLOCK = 32  # WeChat pads to 32 bytes, not AES's 16: library unpadders reject pads of 17..32.


class _Key:
    __slots__ = ("cipher",)

    def __init__(self, encoding_aes_key: str) -> None:
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error as exc:
            raise ValueError("EncodingAESKey is not valid base64") from exc
        if len(key) != 32:
            raise ValueError("EncodingAESKey must decode to 32 bytes")
        # Built once: a Cipher hands out any number of encryptors/decryptors, and building
        # it costs as much as decrypting a push.
        self.cipher = Cipher(algorithms.AES(key), modes.CBC(key[:16]))


class MessageCrypto:
    """Decrypt pushes with any key (console rotation); encrypt with the first key unless
    told which (the reply to a push goes out under the key that opened it)."""

    def __init__(self, token: str, encoding_aes_keys: list[str], appid: str) -> None:
        if not encoding_aes_keys:
            raise ValueError("at least one EncodingAESKey is needed")
        self.token = token
        self.appid = appid
        self._appid_bytes = appid.encode()
        self._keys = [_Key(k) for k in encoding_aes_keys]

    def check_signature(self, timestamp: str, nonce: str, encrypt: str, msg_signature: str) -> None:
        """msg_signature covers the ciphertext, so unlike `signature` it protects the body."""
        verify((self.token, timestamp, nonce, encrypt), msg_signature, what="msg_signature")

    def decrypt(self, encrypt: str) -> bytes:
        """Return the message bytes inside `Encrypt`, or raise DecryptError."""
        return self.decrypt_with_key(encrypt)[0]

    def decrypt_with_key(self, encrypt: str) -> tuple[bytes, int]:
        """The message bytes and the index of the key that opened them (reply with it:
        during a rotation WeChat reads replies with the key it encrypted with)."""
        try:
            data = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptError("Encrypt is not valid base64") from None
        if not data or len(data) % 16:
            raise DecryptError("ciphertext length is not a multiple of the AES block size")
        last: DecryptError | None = None
        for index, key in enumerate(self._keys):
            try:
                return self._open(key, data), index
            except DecryptError as exc:
                last = exc
        assert last is not None
        raise last

    def _open(self, key: _Key, data: bytes) -> bytes:
        dec = key.cipher.decryptor()
        plain = dec.update(data) + dec.finalize()
        pad = plain[-1]
        if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise DecryptError("bad padding (wrong key or corrupted ciphertext)")
        body = plain[16:-pad]
        if len(body) < 4:
            raise DecryptError("plaintext too short")
        (length,) = struct.unpack(">I", body[:4])
        msg, appid = body[4 : 4 + length], body[4 + length :]
        if len(msg) != length:
            raise DecryptError("declared message length exceeds the plaintext")
        if appid != self._appid_bytes:
            raise DecryptError("the message was encrypted for another appid")
        return msg

    def encrypt(self, msg: bytes, *, random_prefix: bytes | None = None, key: int = 0) -> str:
        """Return base64 ciphertext of `msg` under key number `key`, as WeChat builds it."""
        prefix = secrets.token_bytes(16) if random_prefix is None else random_prefix
        body = prefix + struct.pack(">I", len(msg)) + msg + self._appid_bytes
        pad = _BLOCK - len(body) % _BLOCK
        body += bytes([pad]) * pad
        enc = self._keys[key].cipher.encryptor()
        return base64.b64encode(enc.update(body) + enc.finalize()).decode()

    def wrap_reply(self, reply: bytes, *, timestamp: str | None = None,
                   nonce: str | None = None, random_prefix: bytes | None = None,
                   key: int = 0) -> bytes:
        """The encrypted reply envelope with its MsgSignature (the same inputs, the same bytes)."""
        ts = timestamp or str(int(time.time()))
        nc = nonce or str(secrets.randbits(32))  # numeric, like the nonces WeChat sends
        encrypt = self.encrypt(reply, random_prefix=random_prefix, key=key)
        signature = sign(self.token, ts, nc, encrypt)
        # Base64, hex and digits never contain "]]>", so plain CDATA is safe here.
        return (
            f"<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
            f"<MsgSignature><![CDATA[{signature}]]></MsgSignature>"
            f"<TimeStamp>{ts}</TimeStamp><Nonce><![CDATA[{nc}]]></Nonce></xml>"
        ).encode()
