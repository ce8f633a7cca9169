"""The tenant hierarchy's pairing of users with projects (``streams.hierarchy``)."""

from __future__ import annotations

from streams import quota as q
from streams.hierarchy import Membership
from streams.quota.inputs import Scope


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
