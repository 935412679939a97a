"""``python -m pih2t_deploy.cli`` runs the ``pih2t`` command."""

from pih2t_deploy.cli import main

main()
