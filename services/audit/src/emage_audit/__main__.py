"""``python -m emage_audit``: serve the audit service with the settings of the environment."""

from emage_audit.api import create_app
from emage_audit.settings import Settings
from emage_common.web import run


def main() -> None:
    settings = Settings()
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
