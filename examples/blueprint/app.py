# Blueprint guide, "Complete Example": the main application, app.py (rebuilt from its
# description). Its blueprints are in blueprints/users.py and blueprints/auth.py.
# Only the pub/sub parts are here: the guide's version also attaches DaebusHttp and
# DaebusWebSocket and its blueprints add HTTP routes and WebSocket handlers; those come
# with the HTTP/WebSocket examples.
# Run: python examples/blueprint/app.py

from blueprints.auth import auth_bp
from blueprints.users import users_bp

from daebus import Daebus, direct_logger


def main():
    app = Daebus(__name__)

    # Register blueprints before the service starts
    app.register_blueprint(users_bp)
    app.register_blueprint(auth_bp)

    # Application-wide handlers
    @app.on_start()
    def initialize():
        direct_logger.info("Application starting...")

    direct_logger.info("Starting service...")
    app.run(service="user_service")

if __name__ == "__main__":
    main()
