"""Bodies the API cannot store are refused at the door, in every media type it accepts."""

import pytest

from runs.models import Schedule
from tests import factories


@pytest.mark.parametrize("media", ["json", "multipart", "form"])
def test_a_nul_character_in_a_body_is_400_in_any_media_type(admin, prefix, ws, media):
    flow = factories.flow(ws)
    body = {"flow": flow.name, "slug": "s", "kind": "interval", "interval_seconds": 60, "timezone": "Europe/\x00"}
    if media == "form":
        from urllib.parse import urlencode

        response = admin.post(f"{prefix}/schedules/", urlencode(body), content_type="application/x-www-form-urlencoded")
    else:
        response = admin.post(f"{prefix}/schedules/", body, format=media)
    assert response.status_code == 400, response.content
    assert "NUL" in response.json()["error"]["message"]
    assert not Schedule.objects.filter(flow=flow).exists()


def test_a_lone_surrogate_in_json_is_400_not_a_500(admin, prefix, ws):
    from runs.models import Flow

    response = admin.post(f"{prefix}/flows/", b'{"name": "etl-\\ud800"}', content_type="application/json")
    assert response.status_code == 400, response.content
    assert "surrogate" in response.json()["error"]["message"]
    assert not Flow.objects.filter(workspace=ws).exists()


def test_characters_outside_the_basic_plane_are_fine(admin, prefix, ws):
    response = admin.post(f"{prefix}/flows/", {"name": "etl-\U0001f680"}, format="json")
    assert response.status_code == 201 and response.json()["name"] == "etl-\U0001f680"


@pytest.mark.parametrize("url, body, field", [
    ("work_queues/{queue}/", {"job_env": ["x"]}, "job_env"),
    ("work_queues/{queue}/", {"job_env": {"A": {"nested": 1}}}, "job_env"),
    ("schedules/{schedule}/", {"parameters": [1]}, "parameters"),
    ("flows/{flow}/", {"description": ["not", "text"]}, "description"),
])
def test_json_fields_take_only_objects_so_claims_never_break(admin, prefix, ws, url, body, field):
    from runs.models import Schedule, WorkQueue

    flow = factories.flow(ws)
    ids = {"queue": factories.work_queue(ws).pk, "schedule": factories.schedule(flow).pk, "flow": flow.pk}
    response = admin.patch(f"{prefix}/{url.format(**ids)}", body, format="json")
    assert response.status_code == 400 and field in response.json()["error"]["fields"], response.content
    assert WorkQueue.objects.get(pk=ids["queue"]).job_env == {}
    assert Schedule.objects.get(pk=ids["schedule"]).parameters == {}


@pytest.mark.parametrize("model_field, value", [("job_env", ["x"]), ("job_env", {"A": None}), ("labels", "x")])
def test_the_admin_refuses_what_the_api_refuses(ws, model_field, value):
    from django.core.exceptions import ValidationError

    target = factories.work_queue(ws) if model_field == "job_env" else factories.agent(ws)
    setattr(target, model_field, value)
    with pytest.raises(ValidationError) as refused:
        target.full_clean()
    assert model_field in refused.value.message_dict
