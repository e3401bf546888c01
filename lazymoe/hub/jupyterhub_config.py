# The group's JupyterHub (docs/instructor.md, "The course from a browser").
#
# `lazymoe hub --dir DIR --keys FILE [--api-base URL] ...` starts JupyterHub with this file and
# its settings in LAZYMOE_HUB_* environment variables; everything it sets is in
# lazymoe.hub.setup.configure. To change more, copy this file, add lines after configure(...)
# (e.g. c.JupyterHub.ssl_cert / ssl_key for HTTPS), and run `jupyterhub -f your_copy.py` with
# the same LAZYMOE_HUB_* variables (`lazymoe hub --print-env` prints them).
from lazymoe.hub.setup import HubSettings, configure

c = get_config()  # noqa: F821 (JupyterHub defines get_config when it reads this file)
configure(c, HubSettings.from_env())

# Examples (uncomment to use):
# c.Spawner.mem_limit = "6G"                    # per member; enforced by systemdspawner
# c.Spawner.cpu_limit = 1.5                     # cores per member
# c.JupyterHub.ssl_cert = "/etc/letsencrypt/live/hub.example.org/fullchain.pem"
# c.JupyterHub.ssl_key = "/etc/letsencrypt/live/hub.example.org/privkey.pem"
