"""The HTTP routes, one module per group; each holds an ``APIRouter`` that ``create_app`` includes."""
