"""``python -m emage_consent``: serve the consent service with the settings of the environment."""

from emage_common.web import run
from emage_consent.api import create_app
from emage_consent.settings import Settings


def main() -> None:
    settings = Settings()
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
