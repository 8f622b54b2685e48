-- Headless Neovim: attach tokenfill's language server with the built-in LSP client, ask for a
-- completion at a cursor, insert it, write the file. Arguments come from the environment.
local cmd = { vim.env.TOKENFILL_PYTHON, "-m", "tokenfill", "lsp" }
local ready = false
local id = vim.lsp.start_client({
  name = "tokenfill",
  cmd = cmd,
  root_dir = vim.fn.getcwd(),
  -- the fake model says only "a" or "b", never a partial word: plain prompts test the plumbing
  init_options = { model = vim.env.TOKENFILL_MODEL, debounceMs = 0, maxTokens = 6, cursorMode = "none" },
  on_init = function() ready = true end,
})
vim.cmd("edit " .. vim.env.TOKENFILL_FILE)
vim.lsp.buf_attach_client(0, id)
assert(vim.wait(60000, function() return ready end, 50), "the language server did not start")
vim.api.nvim_win_set_cursor(0, { tonumber(vim.env.TOKENFILL_LINE), tonumber(vim.env.TOKENFILL_COL) })
local params = vim.lsp.util.make_position_params()
local responses = vim.lsp.buf_request_sync(0, "textDocument/completion", params, 60000)
local result = responses and responses[id] and responses[id].result
assert(result and result.items and result.items[1], "no completion came back")
vim.lsp.util.apply_text_edits({ result.items[1].textEdit }, 0, "utf-16")
vim.cmd("write")
vim.cmd("qa!")
