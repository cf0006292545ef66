"""``python -m emage_catalog``: serve the catalog service with the settings of the environment."""

from emage_catalog.api import create_app
from emage_catalog.settings import Settings
from emage_common.web import run


def main() -> None:
    settings = Settings()
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
