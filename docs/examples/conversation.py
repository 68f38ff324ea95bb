# conversation.py
"""A two-step conversation on the follower's state: "order", then the order number."""

from handlers import Context, Router, TextMessage

router = Router()


@router.text(equal=["order", "订单"])
async def ask_for_number(msg: TextMessage, ctx: Context) -> str:
    state = await ctx.state()  # this follower's, read from the store now
    state["step"] = "order_number"  # saved once the handlers are done
    return "Send your order number."


@router.text(regex=r"^#?(\d{4,12})$")
async def order_number(msg: TextMessage, ctx: Context) -> str | None:
    state = await ctx.state()
    if state.get("step") != "order_number":
        return None  # a number out of the blue: the next handler may answer
    del state["step"]
    assert ctx.match is not None
    return f"Looking up order {ctx.match[1]}."


@router.text(equal=["cancel", "取消"])
async def cancel(msg: TextMessage, ctx: Context) -> str:
    (await ctx.state()).clear()  # an empty state is deleted
    return "Cancelled."
