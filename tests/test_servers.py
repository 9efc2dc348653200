import requests


def test_live_twitcher_answers_over_real_http(live_twitcher):
    response = requests.get(live_twitcher + "/health", timeout=5)
    assert response.status_code == 200
    assert response.json()["store"] == "ok"
