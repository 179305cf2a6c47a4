"""PII redaction: what is replaced, what is left alone, and the counts."""

from collections import Counter

from dscoder.data.pii import PIIConfig, redact


def run(text):
    counts = Counter()
    return redact(text, PIIConfig(), counts), counts


def test_emails_and_public_addresses():
    text, counts = run("# Contact: jane.doe@example.org\nSERVER = '8.8.8.8'\nV6 = '2001:4860:4860::8888'\n")
    assert text == "# Contact: <EMAIL>\nSERVER = '<IP_ADDRESS>'\nV6 = '<IP_ADDRESS>'\n"
    assert counts == Counter(email=1, ip_address=2)


def test_private_addresses_versions_and_code_are_left_alone():
    text = (
        "HOST = '127.0.0.1'\nLAN = '192.168.1.20'\n__version__ = '2.0.0.1'\nOID = '1.2.840.113549.1'\n"
        "std::vector<int> v; a::b();\n@decorator\ndef f(): pass\ntoken_type = 'quoted-string'\n"
    )
    out, counts = run(text)
    assert out == text and not counts


def test_keys_and_passwords():
    text, counts = run(
        "AWS_KEY = 'AKIAIOSFODNN7EXAMPLE'\n"
        "gh = 'ghp_" + "a1B2" * 9 + "'\n"
        'api_key = "x9F2kQ7LmZ3pR8tY5wV1"\n'
        "db_password = 'Tr0ub4dor&3'\n"
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
    )
    assert "AKIA" not in text and "ghp_" not in text and "x9F2" not in text and "Tr0ub" not in text
    assert "MIIEow" not in text
    assert 'api_key = "<KEY>"' in text and "db_password = '<PASSWORD>'" in text
    assert counts == Counter(key=4, password=1)


def test_disabled():
    counts = Counter()
    assert redact("mail me: a@b.io", PIIConfig(enabled=False), counts) == "mail me: a@b.io" and not counts


def test_decorators_are_not_emails():
    text = "@app.route('/')\ndef index(): pass\n# mail: ab@example.org\n"
    assert run(text) == (text.replace("ab@example.org", "<EMAIL>"), Counter(email=1))
    assert run("@app.route('/')\n@functools.cache\ndef f(): pass\n") == (
        "@app.route('/')\n@functools.cache\ndef f(): pass\n",
        Counter(),
    )
