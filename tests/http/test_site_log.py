"""What the access log may show of a request URI."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from arvnode.http.site import loggable_uri

SIG = "+A" + "0123456789abcdef" * 2 + "01234567" + "@65a1b2c3"


class LoggableUriTests(SynchronousTestCase):
    def test_api_token_removed(self) -> None:
        self.assertEqual(loggable_uri(b"/x?api_token=secret&limit=1"), "/x?limit=1")
        self.assertEqual(loggable_uri(b"/x?api_token=secret"), "/x")

    def test_login_code_removed(self) -> None:
        """An OpenID Connect authorization code is a credential until used."""
        self.assertEqual(loggable_uri(b"/login?code=c0de&state=s"), "/login?state=s")
        self.assertEqual(loggable_uri(b"/x?code=1"), "/x?code=1")

    def test_block_signature_masked(self) -> None:
        """A GET of a signed locator is logged with its hash, size and expiry,
        not its signature (the audit line shows no signature either)."""
        uri = f"/acbd18db4cc2f85cedef654fccc4a4d8+3{SIG}+Kzzzzz".encode()
        logged = loggable_uri(uri)
        self.assertEqual(logged, "/acbd18db4cc2f85cedef654fccc4a4d8+3+A-@65a1b2c3+Kzzzzz")
        self.assertNotIn("0123456789abcdef", logged)
