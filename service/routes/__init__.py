"""One APIRouter per resource. Routes validate, decode, await the worker and encode — nothing else."""
