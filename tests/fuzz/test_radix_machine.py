"""The radix prefix cache under random sequences of insert, match, lock, unlock, pin, unpin,
evict, flush and clock moves: `check_integrity` holds after every step, and eviction never
takes a page that is locked or pinned (a flush never takes a locked one)."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from ragkv.cache.kv.radix import RadixCache, RadixNode
from tests.fuzz import fuzz_settings

PAGE = 2
NAMESPACES = st.sampled_from(["tenant-a", "tenant-b"])
# Few distinct tokens and short prompts: prefixes are shared, trees branch and grow deep.
TOKENS = st.lists(st.integers(0, 2), max_size=12)


class Clock:
    """A clock the machine moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Prompt = tuple[str, tuple[int, ...]]


class RadixMachine(RuleBasedStateMachine):
    """Drives one RadixCache and keeps its own account of pages, locks and pins. Lookups,
    locks and pins mostly name a prompt inserted before (or a prefix of one), so they hit."""

    prompts = Bundle("prompts")
    PROMPTS = st.one_of(prompts, st.tuples(NAMESPACES, TOKENS.map(tuple)))

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.cache = RadixCache(PAGE, clock=self.clock)
        self.next_page_id = 0
        self.pages: set[int] = set()  # page ids the tree should hold
        self.held: list[RadixNode] = []  # locked handles, one entry per lock
        self.pinned_until: dict[int, float] = {}  # page id -> pin expiry

    def locked_pages(self) -> set[int]:
        pages = set()
        for node in self.held:
            while node.parent is not None:
                pages.add(node.page_id)
                node = node.parent
        return pages

    def protected_pages(self) -> set[int]:
        now = self.clock()
        pinned = {page for page, until in self.pinned_until.items() if until > now}
        return self.locked_pages() | pinned

    @rule(
        target=prompts,
        namespace=NAMESPACES,
        tokens=TOKENS,
        approx_from=st.none() | st.integers(0, 12),
    )
    def insert(self, namespace: str, tokens: list[int], approx_from: int | None) -> Prompt:
        num_pages = len(tokens) // PAGE
        page_ids = list(range(self.next_page_id, self.next_page_id + num_pages))
        self.next_page_id += num_pages
        result = self.cache.insert_prefix(namespace, tokens, page_ids, approx_from)
        assert result.num_cached_tokens == num_pages * PAGE
        assert set(result.new_page_ids) <= set(page_ids)
        self.pages |= set(result.new_page_ids)
        assert self.cache.match_prefix(namespace, tokens).num_tokens == num_pages * PAGE
        return namespace, tuple(tokens)

    @rule(target=prompts, prompt=prompts, more=TOKENS, approx_from=st.none() | st.integers(0, 24))
    def extend(self, prompt: Prompt, more: list[int], approx_from: int | None) -> Prompt:
        """A longer prompt over a cached one (a chat's next turn)."""
        namespace, tokens = prompt
        return self.insert(namespace, [*tokens, *more], approx_from)

    @rule(prompt=PROMPTS, exact_only=st.booleans())
    def match(self, prompt: Prompt, exact_only: bool) -> None:
        namespace, tokens = prompt
        match = self.cache.match_prefix(namespace, tokens, exact_only)
        assert match.num_tokens == len(match.page_ids) * PAGE <= len(tokens)
        assert set(match.page_ids) <= self.pages
        if exact_only:
            assert match.approx_from is None

    @rule(prompt=PROMPTS)
    def lock(self, prompt: Prompt) -> None:
        namespace, tokens = prompt
        node = self.cache.match_prefix(namespace, tokens).node
        self.cache.lock(node)
        self.held.append(node)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def unlock(self, data: st.DataObject) -> None:
        node = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.cache.unlock(node)

    @rule(prompt=PROMPTS, ttl_s=st.floats(0.5, 20.0))
    def pin(self, prompt: Prompt, ttl_s: float) -> None:
        namespace, tokens = prompt
        page_ids = self.cache.match_prefix(namespace, tokens).page_ids
        until = self.clock() + ttl_s
        assert self.cache.pin(namespace, tokens, ttl_s) == len(page_ids) * PAGE
        for page in page_ids:
            self.pinned_until[page] = max(self.pinned_until.get(page, 0.0), until)

    @rule(prompt=PROMPTS)
    def unpin(self, prompt: Prompt) -> None:
        namespace, tokens = prompt
        for page in self.cache.match_prefix(namespace, tokens).page_ids:
            self.pinned_until[page] = 0.0
        self.cache.unpin(namespace, tokens)

    @rule()
    def unpin_all(self) -> None:
        self.cache.unpin_all()
        self.pinned_until.clear()

    @rule(seconds=st.floats(0.0, 10.0))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(num_pages=st.integers(0, 8))
    def evict(self, num_pages: int) -> None:
        protected = self.protected_pages()
        freed = self.cache.evict(num_pages)
        assert len(freed) == len(set(freed)) <= num_pages
        assert set(freed) <= self.pages, "freed a page the tree did not hold"
        assert not set(freed) & protected, "evicted a locked or pinned page"
        self.pages -= set(freed)
        if len(freed) < num_pages:
            assert self.cache.evict(1) == [], "stopped short while a page was evictable"

    @rule(namespace=st.none() | NAMESPACES)
    def flush(self, namespace: str | None) -> None:
        locked = self.locked_pages()
        freed = self.cache.flush(namespace)
        assert len(freed) == len(set(freed)) and set(freed) <= self.pages
        assert not set(freed) & locked, "flushed a locked page"
        self.pages -= set(freed)

    @invariant()
    def consistent(self) -> None:
        self.cache.check_integrity()
        info = self.cache.size_info()
        assert info.total_pages == len(self.pages)
        locked = self.locked_pages()
        assert info.locked_pages == len(locked)
        pinned = {page for page, until in self.pinned_until.items() if until > self.clock()}
        assert info.pinned_pages == len((pinned & self.pages) - locked)
        assert info.total_pages == info.evictable_pages + info.locked_pages + info.pinned_pages


TestRadixMachine = RadixMachine.TestCase
TestRadixMachine.settings = fuzz_settings(300, stateful_step_count=40)
