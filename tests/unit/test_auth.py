"""streams.auth and streams.tokens: token store, JWT path, roles and actions, quota rule."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from novaquota.streams.auth import (
    ACTIONS,
    ALLOWED,
    ROLES,
    Access,
    BearerAuth,
    JwtVerifier,
    Principal,
    authorize,
)
from novaquota.streams.errors import ApiError
from novaquota.streams.settings import Settings
from novaquota.streams.tokens import TokenStore, create_token, list_tokens, revoke_token


class Req:
    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}


def bearer(token: str) -> Req:
    return Req({"Authorization": f"Bearer {token}"})


# --- token file and store --------------------------------------------------------------------


def test_the_file_keeps_an_argon2_hash_never_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = create_token(path, "ci", "service", "acme")
    raw = path.read_text()
    secret = token.split("_", 2)[2]
    assert secret not in raw
    (entry,) = json.loads(raw)["tokens"]
    assert entry["hash"].startswith("$argon2id$")
    assert os.stat(path).st_mode & 0o777 == 0o600
    listed = list_tokens(path)
    assert listed[0]["name"] == "ci" and "hash" not in listed[0]
    assert secret not in json.dumps(listed)


def test_verify_accepts_the_token_and_refuses_any_other(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = create_token(path, "ci", "service", "acme")
    store = TokenStore(path)
    assert store.verify(token) == Principal("token:ci", "service", "acme")
    assert store.verify(token) == Principal("token:ci", "service", "acme")  # from the cache
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify("nq_unknown_secret") is None
    assert store.verify("not-a-token") is None


def test_only_a_first_use_or_a_new_guess_is_costly(tmp_path: Path) -> None:
    """What the middleware runs off the event loop: argon2, never a cache hit."""
    path = tmp_path / "tokens.json"
    token = create_token(path, "ci", "service", "acme")
    store = TokenStore(path)
    store.reload()
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert store.costly(token) and store.costly(wrong)
    assert not store.costly("nq_unknown_secret") and not store.costly("not-a-token")
    assert store.verify(wrong) is None
    assert store.costly(token) and not store.costly(wrong)  # a failed guess is remembered
    store.verify(token)
    assert not store.costly(token) and not store.costly(wrong[:-1] + "C")  # id verified

    class Req:
        def __init__(self, value: str) -> None:
            self.headers = {"Authorization": value}

    auth = BearerAuth(store)
    assert not auth.costly(Req(f"Bearer {token}"))
    assert not auth.costly(Req("Bearer eyJ.a.b"))  # a JWT, but no verifier: refused at once
    verifier = JwtVerifier(str(tmp_path / "jwks.json"))
    assert BearerAuth(store, verifier).costly(Req("Bearer eyJ.a.b"))


def test_revoke_takes_effect_on_reload(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = create_token(path, "ci", "admin")
    now = [0.0]
    store = TokenStore(path, reload_seconds=1.0, clock=lambda: now[0])
    assert store.verify(token) is not None
    assert revoke_token(path, "ci")
    assert not revoke_token(path, "ci")
    assert store.verify(token) is not None  # cached until the next look at the file
    now[0] = 1.0
    assert store.verify(token) is None
    later = create_token(path, "ci", "admin")  # the name is free again
    now[0] = 2.0
    assert store.verify(later) is not None and store.verify(token) is None


def test_create_refuses_bad_roles_scopes_and_duplicates(tmp_path: Path) -> None:
    from novaquota.streams.tokens import TokenError

    path = tmp_path / "tokens.json"
    for args in (("x", "root", None), ("x", "viewer", None), ("x", "admin", "acme")):
        with pytest.raises(TokenError):
            create_token(path, *args)
    create_token(path, "x", "viewer", "acme")
    with pytest.raises(TokenError):
        create_token(path, "x", "viewer", "acme")


# --- bearer and anonymous --------------------------------------------------------------------


def test_without_credentials_401_unless_anonymous_is_allowed(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "none.json")
    with pytest.raises(ApiError) as err:
        BearerAuth(store)(Req())
    assert err.value.status == 401
    assert err.value.headers() == {"WWW-Authenticate": "Bearer"}
    assert BearerAuth(store, anonymous_role="viewer")(Req()).role == "viewer"
    with pytest.raises(ApiError):  # a wrong token is not anonymous
        BearerAuth(store, anonymous_role="admin")(bearer("nq_a_b"))


def test_anonymous_setting() -> None:
    assert Settings().auth_anonymous is None
    assert Settings(auth_anonymous="false").auth_anonymous is None
    assert Settings(auth_anonymous="true").auth_anonymous == "admin"
    assert Settings(auth_anonymous="viewer").auth_anonymous == "viewer"
    with pytest.raises(ValueError):
        Settings(auth_anonymous="root")


def test_internal_endpoints_take_the_shared_secret_or_an_admin(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    admin, viewer = create_token(path, "a", "admin"), create_token(path, "v", "viewer", "t1")
    access = Access(BearerAuth(TokenStore(path)), internal_secret="s3cret")
    assert access.internal(Req({"X-Novaquota-Internal": "s3cret"})).subject == "peer"
    assert access.internal(bearer(admin)).role == "admin"
    for req, status in (
        (Req({"X-Novaquota-Internal": "wrong"}), 401),
        (Req(), 401),
        (bearer(viewer), 404),
    ):
        with pytest.raises(ApiError) as err:
            access.internal(req)
        assert err.value.status == status


# --- JWT ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def jwks_file(tmp_path: Path, key: Any) -> Path:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return path


def sign(key: Any, **claims: Any) -> str:
    base = {
        "sub": "alice",
        "iss": "https://idp.example",
        "aud": "novaquota",
        "exp": int(time.time()) + 300,
        "novaquota_role": "tenant-admin",
        "novaquota_tenant": "acme",
    }
    body = {k: v for k, v in {**base, **claims}.items() if v is not None}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


def verifier(path: Path) -> JwtVerifier:
    return JwtVerifier(str(path), issuer="https://idp.example", audience="novaquota")


def test_a_valid_jwt_maps_its_claims_to_a_principal(tmp_path: Path, keys: Any) -> None:
    auth = BearerAuth(jwt_verifier=verifier(jwks_file(tmp_path, keys[0])))
    assert auth(bearer(sign(keys[0]))) == Principal("jwt:alice", "tenant-admin", "acme")
    admin = sign(keys[0], novaquota_role="admin", novaquota_tenant=None)
    assert auth(bearer(admin)) == Principal("jwt:alice", "admin", None)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 60},
        {"aud": "someone-else"},
        {"iss": "https://evil.example"},
        {"novaquota_role": "root"},
        {"novaquota_tenant": None},
        {"exp": None},
    ],
)
def test_a_bad_jwt_answers_401(tmp_path: Path, keys: Any, claims: dict[str, Any]) -> None:
    auth = BearerAuth(jwt_verifier=verifier(jwks_file(tmp_path, keys[0])))
    with pytest.raises(ApiError) as err:
        auth(bearer(sign(keys[0], **claims)))
    assert err.value.status == 401


def test_a_jwt_signed_with_another_key_answers_401(tmp_path: Path, keys: Any) -> None:
    auth = BearerAuth(jwt_verifier=verifier(jwks_file(tmp_path, keys[0])))
    with pytest.raises(ApiError) as err:
        auth(bearer(sign(keys[1])))
    assert err.value.status == 401
    unsigned = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(ApiError):
        auth(bearer(unsigned))


def test_without_a_jwks_a_jwt_answers_401(tmp_path: Path, keys: Any) -> None:
    with pytest.raises(ApiError) as err:
        BearerAuth(TokenStore(tmp_path / "none.json"))(bearer(sign(keys[0])))
    assert err.value.status == 401


# --- roles and actions, quotas -----------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ACTIONS)
def test_role_action_matrix(role: Any, action: Any) -> None:
    expected = {
        "admin": {"read", "check", "write", "admin"},
        "tenant-admin": {"read", "check", "write"},
        "viewer": {"read"},
        "service": {"read", "check"},
    }[role]
    assert (action in ALLOWED[role]) == (action in expected)
    tenant = None if role == "admin" else "acme"
    me = Principal("p", role, tenant)
    if action in expected:
        authorize(me, action, "acme")
    else:
        with pytest.raises(ApiError) as err:
            authorize(me, action, "acme")
        assert err.value.status == 403
    if tenant is not None:  # another tenant: 404 whatever the action
        with pytest.raises(ApiError) as err:
            authorize(me, action, "other")
        assert err.value.status == 404
