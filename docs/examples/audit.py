# audit.py
"""Middleware: a block list, and an audit line for every push this router sees."""

from handlers import Context, InboundMessage, Next, NoReply, Reply, Router, TextMessage

BLOCKED = {"oBlockedFollower000000000001"}

router = Router()


@router.middleware
async def block_list(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
    if msg.openid in BLOCKED:
        ctx.handler = "block_list"  # what the push's log line names as the answer
        return NoReply()  # answered, with nothing: the rules and greeting are not asked
    return await call_next(msg, ctx)


@router.middleware
async def audit(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
    push = msg.event or msg.msg_type
    try:
        reply = await call_next(msg, ctx)
    except Exception:
        ctx.log.warning("audit", push=push, outcome="error")
        raise  # still the server's to log and answer "success"
    ctx.log.info("audit", push=push, handler=ctx.handler or None,
                 reply=reply.msg_type if reply else None)
    return reply


@router.text(equal="ping")
async def ping(msg: TextMessage, ctx: Context) -> str:
    return "pong"
