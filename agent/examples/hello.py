"""The demo flow: greet someone, count the letters of the greeting, report the result."""

from agent import flow, get_run_logger, task


@task
def greet(name):
    greeting = f"Hello, {name}!"
    print(greeting)
    return greeting


@task(retries=1, retry_delay_seconds=1)
def count_letters(text):
    return sum(ch.isalpha() for ch in text)


@task
def report(greeting, letters):
    get_run_logger("hello").info("%r has %d letters", greeting, letters)
    return {"greeting": greeting, "letters": letters}


@flow(name="hello-orchestrator")
def hello(name="world"):
    """Three tasks; each waits for the result of the one before it."""
    greeting = greet(name)
    letters = count_letters(greeting)
    return report(greeting, letters)


if __name__ == "__main__":
    print(hello())
