import pytest


@pytest.mark.gen_test
async def test_register_login_create_list(api):
    token = await api.register("alice")
    created = await api.post("/todo", token=token, body="content=buy+milk",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert created.status == 201, created.json
    listed = await api.get("/todo", token=token)
    assert listed.status == 200
    assert [t["content"] for t in listed.json["data"]] == ["buy milk"]
