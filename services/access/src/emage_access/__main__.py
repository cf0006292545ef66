"""``python -m emage_access``: serve the access service with the settings of the environment."""

from emage_access.api import create_app
from emage_access.settings import Settings
from emage_common.web import run


def main() -> None:
    settings = Settings()
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
