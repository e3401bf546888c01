"""The course from a browser, no install: a JupyterHub for the group, and the instructor's dashboard.

    lazymoe hub --dir /srv/lazymoe-hub --keys /srv/lazymoe/keys.json --set-password alice
    lazymoe hub --dir /srv/lazymoe-hub --keys /srv/lazymoe/keys.json --api-base http://10.0.0.5:8000/v1

Members are the members of the API keys file (`lazymoe serve --add-key`); each logs in with a
password (`passwords`), gets a home folder with their own copy of the course and progress file,
and a personal API key in LAZYMOE_API_KEY (`setup`). The whole setup: docs/instructor.md.
`classroom` reads everyone's progress for the dashboard (instructor/dashboard.ipynb).
"""
