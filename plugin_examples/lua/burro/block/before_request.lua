-- Burro's example script (its README), as written: run with
--   proxy --plugins plugin_examples/lua/burro/block/
log.info("request started", {
    path = ctx.req.path,
    method = ctx.req.method
})

if ctx.req.path == "/block" then
    mut.resp.set_status(403)
    mut.resp.set_body("Blocked by Lua plugin")
    mut.ctx.set_finish()
end
