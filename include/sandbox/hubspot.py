from fastapi import APIRouter


def router(state):
    return APIRouter()
