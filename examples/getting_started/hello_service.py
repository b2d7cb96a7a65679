# Getting-started guide, "Creating Your First Service" (rebuilt from its description).
# Run: python examples/getting_started/hello_service.py

from daebus import Daebus, logger, request, response

app = Daebus(__name__)

@app.action("hello")
def handle_hello():
    # Greet whoever is named in the payload, or the whole world
    name = request.payload.get("name", "World")
    logger.info(f"Saying hello to {name}")

    return response.success({"message": f"Hello, {name}!"})

if __name__ == "__main__":
    app.run(service="hello-service")
