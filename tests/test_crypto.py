"""The AES envelope against published vectors and against wechatpy, in both directions."""

import base64
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from wechatpy.crypto import WeChatCrypto

from tests.support import AES_KEY as KEY
from tests.support import V2, V3
from wxhook.errors import DecryptError, SignatureError
from wxhook.server.crypto import MessageCrypto

V4_ENCRYPT = (
    "D7yzvUNAL930rd28wf21s4hvXhz0L6Uit/p2Di6C5DHyYGpEgdBRnKjBec34JwoQXicwaZC7fOVihW80F4VtsdvE//1v"
    "r7oAbqjDv8KenVp+ajKYpJnyQ4zMRhIC+a31fCVOMC03FfzV/QuC94kBP55a+Za3sJgvAn+ZbsNqZI5DkyuzkhQN8OBq"
    "CzFhizGmy0xpM0MEA4agpvE+RuNO1rhHTtuJB5yltw1FiYzecSXJ+y/D2r81VkRn2eYjh2ltsoyfbDR7Is6ookXIFxTf"
    "yeNyeHxMeT4KN5WpCDmSbTcUYrbBUlkGLJ9n/rU8YOywma6G7aTb7KZKOqCxgfoUlYEZPk4FUL/TK7ShriFDMVCLyjQJ"
    "15Ob++agDWtcxhfUfe6HIoIpRW8mKNBQiY/Jd1svvuskA1wLef1RTtzKfMpagSCX/laZINmdnX4zrF6kIaR9P4xQrWXb"
    "sTFHTYe0Mg=="
)


def test_v2_official_decrypt_and_msg_signature():
    c = MessageCrypto(V2.token, [KEY], V2.appid)
    c.check_signature(V2.timestamp, V2.nonce, V2.encrypt, V2.msg_signature)
    assert c.decrypt(V2.encrypt) == V2.plain


def test_v2_wrong_msg_signature_is_refused():
    c = MessageCrypto(V2.token, [KEY], V2.appid)
    with pytest.raises(SignatureError):
        c.check_signature(V2.timestamp, "1320562133", V2.encrypt, V2.msg_signature)


def test_v3_java_sample_encrypt_with_fixed_random():
    c = MessageCrypto(V3.token, [KEY], V3.appid)
    assert c.encrypt(V3.plain, random_prefix=V3.random) == V3.encrypt


def test_v4_official_end_to_end_example():
    c = MessageCrypto("AAAAA", ["A" * 43], "wx134c8103faa5a59e")
    c.check_signature("1715943329", "1590219412", V4_ENCRYPT,
                      "6c12a4205838198b8fa631b3220723bb07f1015c")
    msg = c.decrypt(V4_ENCRYPT)
    assert len(msg) == 292
    text = msg.decode()
    assert "debug_demo" in text
    assert "o9AgO5Kd5ggOC-bXrbNODIiE3bGY" in text and "gh_97417a04a28d" in text


def test_our_reply_decrypts_with_wechatpy():
    ours = MessageCrypto("spamtest", [KEY], "wx2c2769f8efd9abc2")
    envelope = ours.wrap_reply("<xml><Content><![CDATA[你好]]></Content></xml>".encode(),
                               timestamp="1409735669", nonce="1320562132")
    theirs = WeChatCrypto("spamtest", KEY, "wx2c2769f8efd9abc2")
    # wechatpy checks the MsgSignature against token/timestamp/nonce while decrypting.
    env = envelope.decode()
    sig = env.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    assert theirs.decrypt_message(env, sig, "1409735669", "1320562132") == \
        "<xml><Content><![CDATA[你好]]></Content></xml>"


def test_wechatpy_encrypted_push_decrypts_with_ours():
    theirs = WeChatCrypto("spamtest", KEY, "wx2c2769f8efd9abc2")
    env = theirs.encrypt_message("<xml><Content>hello 世界</Content></xml>", "12345", "1409735669")
    ours = MessageCrypto("spamtest", [KEY], "wx2c2769f8efd9abc2")
    encrypt = env.split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    sig = env.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    ours.check_signature("1409735669", "12345", encrypt, sig)
    assert ours.decrypt(encrypt).decode() == "<xml><Content>hello 世界</Content></xml>"


def test_key_rotation_accepts_old_key_and_encrypts_with_new():
    new = "B" * 43
    old = KEY
    rotating = MessageCrypto("t", [new, old], "wx2c2769f8efd9abc2")
    assert rotating.decrypt(V2.encrypt) == V2.plain           # old key still read
    only_new = MessageCrypto("t", [new], "wx2c2769f8efd9abc2")
    assert only_new.decrypt(rotating.encrypt(b"x")) == b"x"          # replies use the new key
    with pytest.raises(DecryptError):
        only_new.decrypt(V2.encrypt)


def test_wrong_appid_inside_ciphertext_is_refused():
    c = MessageCrypto("spamtest", [KEY], "wxSomeoneElse00000")
    with pytest.raises(DecryptError, match="another appid"):
        c.decrypt(V2.encrypt)


def _raw_encrypt(plain: bytes) -> str:
    key = base64.b64decode(KEY + "=")
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


@pytest.mark.parametrize("pad", [17, 31, 32])
def test_pads_above_16_are_valid(pad):
    # WeChat pads to 32-byte blocks: 17..32 are legal, unlike PKCS#7 for AES's 16.
    appid = b"wx2c2769f8efd9abc2"
    msg = b"m" * ((-(16 + 4 + len(appid) + pad)) % 32)  # so that the pad is exactly `pad`
    body = b"r" * 16 + struct.pack(">I", len(msg)) + msg + appid
    assert (len(body) + pad) % 32 == 0
    c = MessageCrypto("t", [KEY], appid.decode())
    assert c.decrypt(_raw_encrypt(body + bytes([pad]) * pad)) == msg


@pytest.mark.parametrize("bad", [
    lambda b: b[:-1] + b"\x00",                 # pad byte 0
    lambda b: b[:-1] + b"\x21",                 # pad byte 33 > block
    lambda b: b[:-2] + b"\x07\x02",             # inconsistent pad bytes
])
def test_bad_padding_is_refused(bad):
    appid = b"wx2c2769f8efd9abc2"
    body = b"r" * 16 + struct.pack(">I", 10) + b"0123456789" + appid
    pad = 32 - len(body) % 32
    body += bytes([pad]) * pad
    c = MessageCrypto("t", [KEY], appid.decode())
    with pytest.raises(DecryptError):
        c.decrypt(_raw_encrypt(bad(body)))


@pytest.mark.parametrize("encrypt", ["not base64!!", "", base64.b64encode(b"x" * 15).decode(),
                                     base64.b64encode(b"x" * 33).decode()])
def test_garbage_ciphertexts_are_refused(encrypt):
    with pytest.raises(DecryptError):
        MessageCrypto("t", [KEY], "wx2c2769f8efd9abc2").decrypt(encrypt)


def test_declared_length_beyond_plaintext_is_refused():
    appid = b"wx2c2769f8efd9abc2"
    body = b"r" * 16 + struct.pack(">I", 1000) + b"short" + appid
    pad = 32 - len(body) % 32
    with pytest.raises(DecryptError):
        MessageCrypto("t", [KEY], appid.decode()).decrypt(_raw_encrypt(body + bytes([pad]) * pad))
