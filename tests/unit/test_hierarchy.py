"""The tenant hierarchy's pairing of users with projects (``streams.hierarchy``)."""

from __future__ import annotations

from novaquota.streams import quota as q
from novaquota.streams.hierarchy import Membership
from novaquota.streams.quota.inputs import Scope


def instance(project: str | None, user: str | None, live: bool = True) -> q.InstanceState:
    scope = Scope("t1", project, user)
    return q.InstanceState(scope, {"cpu": 1_000_000} if live else {}, live, "nova", 1, not live,
                           "tests", "e1")  # fmt: skip


def test_users_are_listed_under_each_project_they_hold_resources_in() -> None:
    state = q.TenantState(tenant_id="t1")
    state.quotas = {"Pempty": {"cpu": []}, "Ulonely": {"cpu": []}, "Tt1": {"cpu": []}}
    state.usage = {"Pweb": {"cpu": 3_000_000}, "Ualice": {"cpu": 1_000_000}}
    state.gauges = {"eth0": ["db", "carol", {"bandwidth_in": 1}, 1, "tests", "g1"]}
    members = Membership()
    members.state(state)
    members.instances(
        [
            instance("web", "alice"),
            instance("web", "bob"),
            instance("api", "bob"),  # in two projects: under both
            instance("gone", "dave", live=False),  # released: pairs no one
            instance(None, "erin"),  # no project named
            instance("web", None),
        ]
    )
    assert members.body("t1") == {
        "tenant_id": "t1",
        "projects": [
            {"project_id": "api", "users": ["bob"]},
            {"project_id": "db", "users": ["carol"]},
            {"project_id": "empty", "users": []},
            {"project_id": "web", "users": ["alice", "bob"]},
        ],
        "unassigned_users": ["erin", "lonely"],
    }


def test_an_empty_tenant_has_no_projects_and_no_users() -> None:
    members = Membership()
    members.state(q.TenantState(tenant_id="t1"))
    assert members.body("t1") == {"tenant_id": "t1", "projects": [], "unassigned_users": []}


def test_instances_are_read_in_chunks_up_to_the_limit() -> None:
    import asyncio

    from novaquota.streams.hierarchy import read_instances
    from novaquota.streams.store.memory import MemoryBase
    from novaquota.streams.store.records import instance_key

    base = MemoryBase()
    rows = base.rows.setdefault((b"i", "t1"), {})
    for i in range(7):  # seven users, one instance each, all in project web
        rows[instance_key("t1", f"vm-{i}")] = b"re:0:1\n" + instance("web", f"u{i}").to_bytes()
    base.rows.setdefault((b"i", "t2"), {})[instance_key("t2", "vm-0")] = (
        b"re:0:2\n" + instance("other", "zed").to_bytes()
    )

    def read(limit: int, chunk: int) -> tuple[bool, dict[str, object]]:
        members = Membership()
        truncated = asyncio.run(read_instances(base, 0, "t1", members, limit=limit, chunk=chunk))
        return truncated, members.body("t1")

    users = [f"u{i}" for i in range(7)]
    for chunk in (1, 2, 3, 7, 100):  # chunk edges: exact multiples, one, more than the rows
        truncated, body = read(100, chunk)
        assert not truncated and body["projects"] == [{"project_id": "web", "users": users}]
    truncated, body = read(7, 2)  # exactly the limit: nothing left unread
    assert not truncated and body["projects"] == [{"project_id": "web", "users": users}]
    truncated, body = read(5, 2)
    assert truncated and body["projects"] == [{"project_id": "web", "users": users[:5]}]
