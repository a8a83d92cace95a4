"""The leader assignment (streams/leader.py): whatever the members and their claims, exactly
one member gets partition 0 of `_pit.leader`; a member that leads keeps it when others join
or leave (sticky), and the latest term wins when two claim it."""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from hypothesis import given
from hypothesis import strategies as st

from streams.leader import LEADER_TOPIC, LeaderAssignor, choose_leader

members = st.dictionaries(st.text(min_size=1, max_size=8), st.integers(0, 2**40),
                          min_size=1, max_size=8)


@given(members)
def test_exactly_one_member_leads_and_it_holds_the_highest_claim(claims) -> None:
    leader = choose_leader(claims)
    assert leader in claims
    assert claims[leader] == max(claims.values())


@given(members, st.text(min_size=1, max_size=8))
def test_a_member_joining_without_a_claim_does_not_move_a_claimed_leadership(claims,
                                                                           newcomer) -> None:
    leader = choose_leader(claims)
    if claims[leader] > 0 and newcomer not in claims:
        assert choose_leader({**claims, newcomer: 0}) == leader


@given(members)
def test_the_assignment_gives_partition_zero_to_one_member(claims) -> None:
    assignor = LeaderAssignor()
    metadata = {member: ConsumerProtocolMemberMetadata(0, [LEADER_TOPIC],
                                                       claim.to_bytes(8, "big"))
                for member, claim in claims.items()}
    assignment = assignor.assign(None, metadata)
    holders = [member for member, given in assignment.items() if given.partitions()]
    assert holders == [choose_leader(claims)]
    assert [tp.partition for tp in assignment[holders[0]].partitions()] == [0]


def test_a_member_tells_the_group_the_term_it_leads_in() -> None:
    assignor = LeaderAssignor()
    assert assignor.metadata([LEADER_TOPIC]).user_data == bytes(8)
    assignor.claim = 7
    assert int.from_bytes(assignor.metadata([LEADER_TOPIC]).user_data, "big") == 7
