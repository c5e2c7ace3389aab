"""Bodies the API cannot store are refused at the door, in every media type it accepts."""

import pytest

from runs.models import Role, Schedule
from tests import factories


@pytest.fixture
def admin(api, key_for):
    return api.as_key(key_for(Role.ADMIN))


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
