"""``python -m emage_ingest``: serve the ingest service with the settings of the environment."""

from emage_common.web import run
from emage_ingest.api import create_app
from emage_ingest.settings import Settings


def main() -> None:
    settings = Settings()
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
